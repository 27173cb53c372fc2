//! One log line per HTTP request: method, path, status, time taken, user, client; and
//! the request's span, so every line logged while serving it carries its request id,
//! and, once known, its user and job id (`--log-format json` shows them as fields).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use super::auth::AuthUser;

/// The header a request id comes in (from a proxy in front) and goes back out in.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id: the caller's `X-Request-Id` when it is short and plain (so a proxy's
/// id ties its log to ours), otherwise a new one, unique within this process run.
fn request_id(request: &Request) -> String {
    let given = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    if let Some(id) = given {
        return id.to_owned();
    }
    // Process start (ms, hex) plus a counter: unique per run, and across restarts.
    static STARTED: LazyLock<u128> = LazyLock::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    });
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{:x}-{}", *STARTED, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Middleware that logs each request once its response is ready.
///
/// Only the path is logged: no query string, and no header (so never `Authorization`).
/// A request whose caller hangs up before the answer gets no line here; its sync, if
/// any, is still logged by the sync handler. Successful probes and scrapes (`/check`,
/// `/metrics`) log at debug level: a load balancer polling every second would otherwise
/// bury the lines that matter.
pub async fn log_request(request: Request, next: Next) -> Response {
    let id = request_id(&request);
    // `user` and `job` are recorded by the auth middleware and the sync handler.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        user = tracing::field::Empty,
        job = tracing::field::Empty
    );
    let mut response = log_in_span(request, next).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

async fn log_in_span(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.to_string())
        .unwrap_or_default();
    let response = next.run(request).await;
    let user = response
        .extensions()
        .get::<AuthUser>()
        .map(|AuthUser(user)| user.as_str())
        .unwrap_or("-");
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if matches!(path.as_str(), "/check" | "/metrics") && response.status().is_success() {
        tracing::debug!(%method, path = ?path, status, ms = format_args!("{ms:.1}"), client, "request");
    } else {
        tracing::info!(
            %method,
            // Debug formatting escapes anything odd a client put into the path.
            path = ?path,
            status,
            ms = format_args!("{ms:.1}"),
            user,
            client,
            "request"
        );
    }
    response
}
