//! The route table (design.md section 2) and the layers around it.

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, MethodRouter};
use axum::Router;

use super::access_log::log_request;
use super::auth::require_basic_auth;
use super::body::MAX_BODY_BYTES;
use super::handlers;
use super::jobs_api;
use super::request_metrics::observe_request;
use super::state::AppState;

/// The sync route; the trailing-slash spelling is served too, as the seed did.
pub const RSYNC_PATH: &str = "/v1/image/rsync";

/// The Prometheus scrape route. No auth: scrapers send no credentials, and the answer
/// holds no secret, image name or user (see `crate::metrics`).
pub const METRICS_PATH: &str = "/metrics";

/// Builds the whole API. Used by the server and, in-process, by tests.
pub fn router(state: AppState) -> Router {
    // route_layer on the method router (not on a Router, where it also wraps the method
    // fallback): auth runs only for GET/POST, so a wrong method still gets its 405, and
    // it runs before the handler reads the body.
    let rsync: MethodRouter<AppState> = get(handlers::rsync_hint)
        .post(handlers::rsync)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_basic_auth,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(handlers::method_not_allowed);
    let auth = || middleware::from_fn_with_state(state.clone(), require_basic_auth);
    let jobs = get(jobs_api::list_jobs)
        .route_layer(auth())
        .fallback(handlers::method_not_allowed);
    let job = get(jobs_api::get_job)
        .delete(jobs_api::cancel_job)
        .route_layer(auth())
        .fallback(handlers::method_not_allowed);
    let job_events = get(jobs_api::job_events)
        .route_layer(auth())
        .fallback(handlers::method_not_allowed);
    Router::new()
        .route(
            "/",
            get(handlers::home).fallback(handlers::method_not_allowed),
        )
        .route(
            "/check",
            get(handlers::health).fallback(handlers::method_not_allowed),
        )
        .route(
            METRICS_PATH,
            get(handlers::metrics).fallback(handlers::method_not_allowed),
        )
        .route(RSYNC_PATH, rsync.clone())
        .route(&format!("{RSYNC_PATH}/"), rsync)
        .route(&format!("{RSYNC_PATH}/jobs"), jobs)
        .route(&format!("{RSYNC_PATH}/jobs/{{id}}"), job)
        .route(&format!("{RSYNC_PATH}/jobs/{{id}}/events"), job_events)
        .fallback(handlers::not_found)
        // Router::layer wraps each route (and the fallback) after routing, so the
        // matched route template is known to the middleware.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe_request,
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}
