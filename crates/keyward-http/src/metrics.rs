//! Prometheus metrics: the recorder and the per-route request middleware.
//!
//! Labels are route templates (`/v1/sessions/{id}`), methods and status codes: never a value
//! taken from a request.

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How often the recorder's histograms are brought up to date (the crate's own default).
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
/// `None` when another recorder was installed first. A process-wide side effect: the binary
/// calls it at start, an embedding app only if it wants keyward's recorder as its own. Call
/// it inside a Tokio runtime (`None` outside one): it spawns there the task that keeps the
/// recorder's histograms bounded (every 5 s).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            // Histogram samples wait in the recorder until upkeep folds them into their
            // buckets: without it every request's timing would be kept until the next
            // scrape, and forever when nobody scrapes.
            let upkeep = handle.clone();
            runtime.spawn(async move {
                let mut every = tokio::time::interval(UPKEEP_INTERVAL);
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
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
    metrics::describe_counter!(
        "keyward_code_replays_total",
        "Authorization codes presented again after use (what they issued revoked)"
    );
    // Present from the start so dashboards see zeros, not gaps.
    for grant in ["password", "refresh_token", "authorization_code"] {
        metrics::counter!("keyward_tokens_issued_total", "grant" => grant).increment(0);
    }
    metrics::counter!("keyward_refresh_reuse_total").increment(0);
    metrics::counter!("keyward_code_replays_total").increment(0);
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

/// The statuses keyward answers with, each with its counter slot in [`RouteMetrics`]; any
/// other status is counted through the slower `others` list.
const STATUSES: [u16; 18] = [
    200, 201, 204, 302, 303, 304, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503,
];

/// The metric handles of one route template and method: made once, kept for the life of the
/// process (route templates and methods are finite), so a request neither allocates labels
/// nor looks a metric up by name.
struct RouteMetrics {
    route: &'static str,
    method: &'static str,
    histogram: Histogram,
    counters: [OnceLock<Counter>; STATUSES.len()],
    others: Mutex<Vec<(u16, Counter)>>,
}

impl RouteMetrics {
    fn new(route: &str, method: &'static str) -> &'static Self {
        let route: &'static str = Box::leak(route.into());
        Box::leak(Box::new(Self {
            route,
            method,
            histogram: metrics::histogram!("keyward_http_request_duration_seconds", "route" => route, "method" => method),
            counters: Default::default(),
            others: Mutex::default(),
        }))
    }

    /// Count one answer with `status`.
    fn count(&self, status: u16) {
        let make = || metrics::counter!("keyward_http_requests_total", "route" => self.route, "method" => self.method, "status" => status.to_string());
        let slot = STATUSES
            .iter()
            .position(|s| *s == status)
            .and_then(|i| self.counters.get(i));
        match slot {
            Some(slot) => slot.get_or_init(make).increment(1),
            None => {
                let mut others = self.others.lock().unwrap_or_else(PoisonError::into_inner);
                match others.iter().find(|(s, _)| *s == status) {
                    Some((_, c)) => c.increment(1),
                    None => {
                        let c = make();
                        c.increment(1);
                        others.push((status, c));
                    }
                }
            }
        }
    }
}

/// Every route's handles, to make each once.
static ROUTES: Mutex<Vec<&'static RouteMetrics>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's view of [`ROUTES`], by the address of the route template's text (axum
    /// hands every request of a route the same `Arc<str>`) and checked by content, so two
    /// worker threads never contend on a lock to count a request.
    static SEEN: std::cell::RefCell<Vec<(usize, &'static RouteMetrics)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn route_metrics(route: &str, method: &'static str) -> &'static RouteMetrics {
    let key = route.as_ptr() as usize;
    let hit = |m: &&'static RouteMetrics| m.method == method && m.route == route;
    if let Some(m) = SEEN.with_borrow(|seen| {
        seen.iter()
            .find(|(k, m)| *k == key && hit(m))
            .map(|(_, m)| *m)
    }) {
        return m;
    }
    let m = {
        let mut all = ROUTES.lock().unwrap_or_else(PoisonError::into_inner);
        match all.iter().find(|m| hit(m)) {
            Some(m) => *m,
            None => {
                let m = RouteMetrics::new(route, method);
                all.push(m);
                m
            }
        }
    };
    SEEN.with_borrow_mut(|seen| seen.push((key, m)));
    m
}

/// What [`finish`] needs to know about a request, taken before it is handled.
pub(crate) struct Timing {
    metrics: &'static RouteMetrics,
    start: Instant,
}

/// Start timing a request (by its route template).
pub(crate) fn start(req: &Request) -> Timing {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    Timing {
        metrics: route_metrics(route, method_label(req.method())),
        start: Instant::now(),
    }
}

/// Count and time a finished request.
pub(crate) fn finish(t: Timing, res: &Response) {
    t.metrics.count(res.status().as_u16());
    t.metrics.histogram.record(t.start.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_recorder_counts_requests_by_route_method_and_status() {
        assert!(install().is_some());
        let route = String::from("/v1/things/{id}");
        for status in [200, 200, 418] {
            route_metrics(&route, "GET").count(status);
        }
        // The same route's text elsewhere in memory is the same route.
        assert!(std::ptr::eq(
            route_metrics(&route.clone(), "GET"),
            route_metrics(&route, "GET")
        ));
        let text = render().unwrap();
        for line in [
            "keyward_http_requests_total{route=\"/v1/things/{id}\",method=\"GET\",status=\"200\"} 2",
            "keyward_http_requests_total{route=\"/v1/things/{id}\",method=\"GET\",status=\"418\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }
}
