//! One log line per HTTP request: method, path, status, time taken, user, client.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;

use super::auth::AuthUser;

/// Middleware that logs each request once its response is ready.
///
/// Only the path is logged: no query string, and no header (so never `Authorization`).
/// A request whose caller hangs up before the answer gets no line here; its sync, if
/// any, is still logged by the sync handler. Successful probes and scrapes (`/check`,
/// `/metrics`) log at debug level: a load balancer polling every second would otherwise
/// bury the lines that matter.
pub async fn log_request(request: Request, next: Next) -> Response {
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
