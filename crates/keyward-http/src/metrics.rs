//! Prometheus metrics: the recorder and the per-route request middleware.
//!
//! Labels are route templates (`/v1/sessions/{id}`), methods and status codes: never a value
//! taken from a request.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
/// `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "keyward_http_requests_total",
        "HTTP requests by route, method and status"
    );
    metrics::describe_histogram!(
        "keyward_http_request_duration_seconds",
        "HTTP request latency by route and method"
    );
    metrics::describe_counter!(
        "keyward_logins_total",
        "Login attempts by result (ok, failed, throttled)"
    );
    metrics::describe_counter!("keyward_sessions_created_total", "Sessions created");
    metrics::describe_counter!(
        "keyward_sessions_revoked_total",
        "Sessions ended, by reason"
    );
    metrics::describe_counter!(
        "keyward_store_errors_total",
        "Store operations that failed, by store"
    );
    metrics::describe_counter!(
        "keyward_tokens_issued_total",
        "Access tokens issued, by grant"
    );
    metrics::describe_counter!(
        "keyward_refresh_reuse_total",
        "Refresh tokens presented again after use (families revoked)"
    );
    // Present from the start so dashboards see zeros, not gaps.
    for grant in ["password", "refresh_token"] {
        metrics::counter!("keyward_tokens_issued_total", "grant" => grant).increment(0);
    }
    metrics::counter!("keyward_refresh_reuse_total").increment(0);
    for result in ["ok", "failed", "throttled"] {
        metrics::counter!("keyward_logins_total", "result" => result).increment(0);
    }
    metrics::counter!("keyward_sessions_created_total").increment(0);
    metrics::counter!("keyward_store_errors_total", "store" => "sql").increment(0);
}

/// Count and time every request by its route template.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Known methods only: arbitrary method names must not mint new label values.
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let start = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("keyward_http_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("keyward_http_request_duration_seconds", "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    res
}
