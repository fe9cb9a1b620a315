//! Prometheus metrics: the recorder and the per-route request middleware.
//!
//! Labels are route templates (`/v1/sessions/{id}`), methods and status codes: never a value
//! taken from a request.

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Instant;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
/// `None` when another recorder was installed first. A process-wide side effect: the binary
/// calls it at start, an embedding app only if it wants keyward's recorder as its own.
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

/// The text exposition of the recorder [`install`] put in place, if it did.
pub fn render() -> Option<String> {
    HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
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
        "keyward_session_cache_total",
        "Session reads by how the node-local cache answered (hit, miss, bypass while catching up)"
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

/// The method label: known methods only, so arbitrary method names cannot mint label values.
fn method_label(m: &axum::http::Method) -> &'static str {
    match *m {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The counter and histogram of one (method, status) on one route.
type Handles = (&'static str, u16, Counter, Histogram);

/// Metric handles by route template, so a request neither allocates labels nor looks the
/// metric up in the registry. Bounded: route templates, methods and statuses are finite.
static HANDLES: OnceLock<RouteHandles> = OnceLock::new();

type RouteHandles = RwLock<HashMap<Box<str>, RwLock<Vec<Handles>>>>;

fn handles(route: &str, method: &'static str, status: u16) -> (Counter, Histogram) {
    let map = HANDLES.get_or_init(Default::default);
    {
        let routes = map.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(per) = routes.get(route) {
            let per = per.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, _, c, h)) = per.iter().find(|(m, s, _, _)| *m == method && *s == status)
            {
                return (c.clone(), h.clone());
            }
        }
    }
    let counter = metrics::counter!("keyward_http_requests_total", "route" => route.to_owned(), "method" => method, "status" => status.to_string());
    let histogram = metrics::histogram!("keyward_http_request_duration_seconds", "route" => route.to_owned(), "method" => method);
    let mut routes = map.write().unwrap_or_else(PoisonError::into_inner);
    let per = routes.entry(route.into()).or_default();
    per.write().unwrap_or_else(PoisonError::into_inner).push((
        method,
        status,
        counter.clone(),
        histogram.clone(),
    ));
    (counter, histogram)
}

/// What [`finish`] needs to know about a request, taken before it is handled.
pub(crate) struct Timing {
    route: Option<MatchedPath>,
    method: &'static str,
    start: Instant,
}

/// Start timing a request (by its route template).
pub(crate) fn start(req: &Request) -> Timing {
    Timing {
        route: req.extensions().get::<MatchedPath>().cloned(),
        method: method_label(req.method()),
        start: Instant::now(),
    }
}

/// Count and time a finished request.
pub(crate) fn finish(t: Timing, res: &Response) {
    let route = t.route.as_ref().map_or("unmatched", |p| p.as_str());
    let (counter, histogram) = handles(route, t.method, res.status().as_u16());
    counter.increment(1);
    histogram.record(t.start.elapsed().as_secs_f64());
}
