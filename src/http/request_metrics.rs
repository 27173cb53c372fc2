//! Times each HTTP request into the metrics, labelled by its route template.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::state::AppState;
use crate::metrics::UNMATCHED_ROUTE;

/// Middleware that counts each request once its response head is ready (a streamed
/// body, as the job events route sends, is not waited for).
///
/// The route label is the matched template (`/v1/image/rsync/jobs/{id}`), never the raw
/// path: job ids and whatever a client puts into an unknown path would make a new
/// series per request.
pub async fn observe_request(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || UNMATCHED_ROUTE.to_owned(),
        |path| path.as_str().to_owned(),
    );
    let response = next.run(request).await;
    state.metrics().record_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
