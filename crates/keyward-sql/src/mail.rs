//! [`TicketStore`] and [`Outbox`] on SQL: mailed links' tickets and the durable outbox.

use crate::rows::{summary_cols, ticket_cols, OutboundRow, SummaryRow, TicketRow};
use crate::store::{lock_id, on, Dialect, SqlStore};
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::to_unix_ms;
use keyward_core::{
    MailSummary, OutboundMail, Outbox, StoreResult, Ticket, TicketKind, TicketStore, TokenHash,
    UserId,
};
use time::OffsetDateTime;

const END_TICKETS: &str = "DELETE FROM tickets WHERE user_id = $1 AND kind = $2";
const INSERT_TICKET: &str = concat!(
    "INSERT INTO tickets (",
    ticket_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6)"
);
const FIND_TICKET: &str = concat!(
    "SELECT ",
    ticket_cols!(),
    " FROM tickets WHERE token_hash = $1 AND kind = $2 AND expires_at > $3"
);
const REDEEM_TICKET: &str = concat!(
    "DELETE FROM tickets WHERE token_hash = $1 AND kind = $2 RETURNING ",
    ticket_cols!()
);
const PURGE_TICKETS: &str = "DELETE FROM tickets WHERE expires_at <= $1";

const ENQUEUE: &str = "INSERT INTO mail_outbox \
     (id, kind, recipient, message, created_at, expires_at, next_attempt_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $5)";
/// Claim due mails: one statement, so a claim is atomic. The engine adds how rows are locked
/// (`Dialect::CLAIM_MAIL`).
macro_rules! claim_mail {
    ($lock:literal) => {
        concat!(
            "UPDATE mail_outbox SET lease_until = $1 WHERE id IN (SELECT id FROM mail_outbox \
             WHERE state = 'queued' AND next_attempt_at <= $2 AND lease_until <= $2 \
             ORDER BY next_attempt_at LIMIT $3",
            $lock,
            ") RETURNING ",
            $crate::rows::outbound_cols!()
        )
    };
}
pub(crate) use claim_mail;
const DELIVERED: &str = "UPDATE mail_outbox SET state = 'sent', message = NULL, done_at = $1, \
     lease_until = 0, attempts = attempts + 1, last_error = NULL WHERE id = $2";
const RETRY: &str = "UPDATE mail_outbox SET attempts = attempts + 1, next_attempt_at = $1, \
     lease_until = 0, last_error = $2 WHERE id = $3 AND state = 'queued'";
const PARK: &str = "UPDATE mail_outbox SET state = 'parked', message = NULL, done_at = $1, \
     lease_until = 0, attempts = attempts + 1, last_error = $2 WHERE id = $3 AND state = 'queued'";
const LIST: &str = concat!(
    "SELECT ",
    summary_cols!(),
    " FROM mail_outbox ORDER BY created_at DESC, id LIMIT $1"
);
const PURGE_MAIL: &str = "DELETE FROM mail_outbox WHERE state <> 'queued' AND done_at < $1";

/// Longest error kept with a mail.
const ERROR_MAX: usize = 500;

#[async_trait]
impl TicketStore for SqlStore {
    async fn issue_ticket(&self, ticket: &Ticket) -> StoreResult<()> {
        // One user's issues run one at a time: of two concurrent requests, the later ends the
        // earlier's ticket (PostgreSQL would otherwise let both inserts stand).
        let lock = lock_id(&format!("tickets:{}", ticket.user_id));
        on!(self, |p| async {
            let mut tx = D::begin_serial(p, lock).await?;
            if ticket.kind.newest_only() {
                sqlx::query(END_TICKETS)
                    .bind(ticket.user_id.to_string())
                    .bind(ticket.kind.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(INSERT_TICKET)
                .bind(ticket.hash.as_bytes().as_slice())
                .bind(ticket.kind.as_str())
                .bind(ticket.user_id.to_string())
                .bind(ticket.email.as_deref())
                .bind(to_unix_ms(ticket.created_at))
                .bind(to_unix_ms(ticket.expires_at))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(store_error)
    }

    async fn find_ticket(
        &self,
        hash: &TokenHash,
        kind: TicketKind,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Ticket>> {
        let row: Option<TicketRow> = on!(self, |p| sqlx::query_as(FIND_TICKET)
            .bind(hash.as_bytes().as_slice())
            .bind(kind.as_str())
            .bind(to_unix_ms(now))
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(Ticket::try_from).transpose()
    }

    async fn redeem_ticket(
        &self,
        hash: &TokenHash,
        kind: TicketKind,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Ticket>> {
        let row: Option<TicketRow> = on!(self, |p| sqlx::query_as(REDEEM_TICKET)
            .bind(hash.as_bytes().as_slice())
            .bind(kind.as_str())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        // An expired ticket is removed all the same, and refused.
        Ok(row
            .map(Ticket::try_from)
            .transpose()?
            .filter(|t| t.expires_at > now))
    }

    async fn end_tickets(&self, user: UserId, kind: TicketKind) -> StoreResult<u64> {
        on!(self, |p| sqlx::query(END_TICKETS)
            .bind(user.to_string())
            .bind(kind.as_str())
            .execute(p)
            .await
            .map(|d| d.rows_affected()))
        .map_err(store_error)
    }

    async fn purge_tickets(&self, now: OffsetDateTime) -> StoreResult<u64> {
        on!(self, |p| sqlx::query(PURGE_TICKETS)
            .bind(to_unix_ms(now))
            .execute(p)
            .await
            .map(|d| d.rows_affected()))
        .map_err(store_error)
    }
}

fn clip(error: &str) -> String {
    error.chars().take(ERROR_MAX).collect()
}

#[async_trait]
impl Outbox for SqlStore {
    async fn enqueue(&self, mail: &OutboundMail) -> StoreResult<()> {
        on!(self, |p| sqlx::query(ENQUEUE)
            .bind(&mail.id)
            .bind(&mail.kind)
            .bind(&mail.recipient)
            .bind(mail.message.as_slice())
            .bind(to_unix_ms(mail.created_at))
            .bind(to_unix_ms(mail.expires_at))
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn claim(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<Vec<OutboundMail>> {
        let rows: Vec<OutboundRow> = on!(self, |p| sqlx::query_as(<D as Dialect>::CLAIM_MAIL)
            .bind(to_unix_ms(lease_until))
            .bind(to_unix_ms(now))
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(store_error)?;
        let mut mails: Vec<OutboundMail> = rows.into_iter().map(OutboundMail::from).collect();
        mails.sort_by_key(|m| m.created_at);
        Ok(mails)
    }

    async fn delivered(&self, id: &str, now: OffsetDateTime) -> StoreResult<()> {
        on!(self, |p| sqlx::query(DELIVERED)
            .bind(to_unix_ms(now))
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn failed(
        &self,
        id: &str,
        now: OffsetDateTime,
        retry_at: Option<OffsetDateTime>,
        error: &str,
    ) -> StoreResult<()> {
        let error = clip(error);
        on!(self, |p| match retry_at {
            Some(at) => sqlx::query(RETRY)
                .bind(to_unix_ms(at))
                .bind(&error)
                .bind(id)
                .execute(p)
                .await
                .map(|_| ()),
            None => sqlx::query(PARK)
                .bind(to_unix_ms(now))
                .bind(&error)
                .bind(id)
                .execute(p)
                .await
                .map(|_| ()),
        })
        .map_err(store_error)
    }

    async fn list_mail(&self, limit: u32) -> StoreResult<Vec<MailSummary>> {
        let rows: Vec<SummaryRow> = on!(self, |p| sqlx::query_as(LIST)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(store_error)?;
        rows.into_iter().map(MailSummary::try_from).collect()
    }

    async fn purge_mail(&self, before: OffsetDateTime) -> StoreResult<u64> {
        on!(self, |p| sqlx::query(PURGE_MAIL)
            .bind(to_unix_ms(before))
            .execute(p)
            .await
            .map(|d| d.rows_affected()))
        .map_err(store_error)
    }
}
