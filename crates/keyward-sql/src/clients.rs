//! [`ClientStore`] on SQL.

use crate::store::{on, SqlStore};
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::{ClientRecord, ClientStore, StoreError, StoreResult, TokenHash};

const COLS: &str =
    "id, name, redirect_uris, post_logout_redirect_uris, secret_hash, first_party, created_at";
const INSERT: &str = "INSERT INTO oauth_clients \
     (id, name, redirect_uris, post_logout_redirect_uris, secret_hash, first_party, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
/// A client goes with its codes and consents; its grants stay until their families end
/// (see `GrantStore::grants_of`).
const DELETE: [&str; 3] = [
    "DELETE FROM oauth_codes WHERE client_id = $1",
    "DELETE FROM oauth_consents WHERE client_id = $1",
    "DELETE FROM oauth_clients WHERE id = $1",
];

#[derive(sqlx::FromRow)]
struct ClientRow {
    id: String,
    name: String,
    redirect_uris: String,
    post_logout_redirect_uris: String,
    secret_hash: Option<Vec<u8>>,
    first_party: bool,
    created_at: i64,
}

impl TryFrom<ClientRow> for ClientRecord {
    type Error = StoreError;
    fn try_from(r: ClientRow) -> Result<Self, StoreError> {
        let list = |s: &str| {
            serde_json::from_str::<Vec<String>>(s)
                .map_err(|_| StoreError::Corrupt("a client's URI list".into()))
        };
        Ok(ClientRecord {
            redirect_uris: list(&r.redirect_uris)?,
            post_logout_redirect_uris: list(&r.post_logout_redirect_uris)?,
            secret_hash: r
                .secret_hash
                .map(|h| {
                    TokenHash::from_slice(&h)
                        .ok_or_else(|| StoreError::Corrupt("a client secret's hash".into()))
                })
                .transpose()?,
            id: r.id,
            name: r.name,
            first_party: r.first_party,
            created_at: from_unix_ms(r.created_at),
        })
    }
}

fn json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

#[async_trait]
impl ClientStore for SqlStore {
    async fn create_client(&self, c: &ClientRecord) -> StoreResult<()> {
        on!(self, |p| sqlx::query(INSERT)
            .bind(&c.id)
            .bind(&c.name)
            .bind(json(&c.redirect_uris))
            .bind(json(&c.post_logout_redirect_uris))
            .bind(c.secret_hash.as_ref().map(|h| h.as_bytes().to_vec()))
            .bind(c.first_party)
            .bind(to_unix_ms(c.created_at))
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn client(&self, id: &str) -> StoreResult<Option<ClientRecord>> {
        let sql = format!("SELECT {COLS} FROM oauth_clients WHERE id = $1");
        let row: Option<ClientRow> = on!(self, |p| sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(ClientRecord::try_from).transpose()
    }

    async fn list_clients(&self) -> StoreResult<Vec<ClientRecord>> {
        let sql = format!("SELECT {COLS} FROM oauth_clients ORDER BY name, id");
        let rows: Vec<ClientRow> =
            on!(self, |p| sqlx::query_as(&sql).fetch_all(p).await).map_err(store_error)?;
        rows.into_iter().map(ClientRecord::try_from).collect()
    }

    async fn delete_client(&self, id: &str) -> StoreResult<bool> {
        on!(self, |p| async {
            let mut tx = p.begin().await?;
            let mut deleted = 0;
            for sql in DELETE {
                deleted = sqlx::query(sql)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(deleted > 0)
        }
        .await)
        .map_err(store_error)
    }
}
