//! The route table (design.md section 2) and the layers around it.

use axum::middleware;
use axum::routing::{get, MethodRouter};
use axum::Router;

use super::access_log::log_request;
use super::auth::require_basic_auth;
use super::dashboard;
use super::events_api;
use super::handlers;
use super::jobs_api;
use super::mirrors_api::{self, MIRRORS_PATH};
use super::openapi;
use super::request_metrics::observe_request;
use super::state::AppState;

/// The sync route; the trailing-slash spelling is served too, as the seed did.
pub const RSYNC_PATH: &str = "/v1/image/rsync";

/// The Prometheus scrape route. No auth: scrapers send no credentials, and the answer
/// holds no secret, image name or user (see `crate::metrics`).
pub const METRICS_PATH: &str = "/metrics";

/// Builds the whole API. Used by the server and, in-process, by tests.
pub fn router(state: AppState) -> Router {
    routes(&state)
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(&path, methods)
        })
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

/// Every path the router serves, with its handlers. Kept as a list (rather than a chain
/// of `.route` calls) so the OpenAPI test can check that each one is documented in
/// `doc/openapi.json`: add a route here and the test asks for its description.
pub fn routes(state: &AppState) -> Vec<(String, MethodRouter<AppState>)> {
    // route_layer on the method router (not on a Router, where it also wraps the method
    // fallback): auth runs only for the methods a route takes, so a wrong method still
    // gets its 405, and it runs before the handler reads the body.
    let auth = || middleware::from_fn_with_state(state.clone(), require_basic_auth);
    let public = |methods: MethodRouter<AppState>| methods.fallback(handlers::method_not_allowed);
    let rsync: MethodRouter<AppState> = get(handlers::rsync_hint)
        .post(handlers::rsync)
        .route_layer(auth())
        .fallback(handlers::method_not_allowed);
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
    let mirrors = get(mirrors_api::list_mirrors)
        .route_layer(auth())
        .fallback(handlers::method_not_allowed);
    let mirror_run = axum::routing::post(mirrors_api::run_mirror)
        .route_layer(auth())
        .fallback(handlers::method_not_allowed);
    let distribution_events = axum::routing::post(events_api::distribution)
        .route_layer(auth())
        .fallback(handlers::method_not_allowed);
    let harbor_events = axum::routing::post(events_api::harbor)
        .route_layer(auth())
        .fallback(handlers::method_not_allowed);
    vec![
        ("/".into(), public(get(dashboard::page))),
        (
            dashboard::SCRIPT_PATH.into(),
            public(get(dashboard::script)),
        ),
        (
            dashboard::STYLESHEET_PATH.into(),
            public(get(dashboard::stylesheet)),
        ),
        ("/openapi.json".into(), public(get(openapi::spec))),
        ("/check".into(), public(get(handlers::health))),
        ("/ready".into(), public(get(handlers::ready))),
        (METRICS_PATH.into(), public(get(handlers::metrics))),
        (RSYNC_PATH.into(), rsync.clone()),
        (format!("{RSYNC_PATH}/"), rsync),
        (format!("{RSYNC_PATH}/jobs"), jobs),
        (format!("{RSYNC_PATH}/jobs/{{id}}"), job),
        (format!("{RSYNC_PATH}/jobs/{{id}}/events"), job_events),
        (MIRRORS_PATH.into(), mirrors),
        (format!("{MIRRORS_PATH}/{{name}}/run"), mirror_run),
        (events_api::DISTRIBUTION_PATH.into(), distribution_events),
        (events_api::HARBOR_PATH.into(), harbor_events),
    ]
}
