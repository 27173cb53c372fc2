//! The HTTP API (design.md section 2): routes, Basic auth, request and response shapes.
//!
//! One job per module: [`router`](mod@router) wires routes and layers, [`auth`] checks
//! credentials (with `crate::access` for damping and scopes), [`body`] parses the sync request, [`handlers`] answer, [`jobs_api`]
//! serves the job routes, [`mirrors_api`] the mirror routes, [`events_api`] the push-event routes, [`response`] holds the JSON shapes and the single outcome →
//! status mapping, [`recorder`] logs finished syncs, [`home`] renders the page at
//! `GET /` and [`dashboard`] serves it with its script and stylesheet, [`openapi`]
//! serves the API description, [`access_log`] writes one line per request,
//! [`request_metrics`] times it for `GET /metrics`, [`state`] holds what handlers share.

pub mod access_log;
pub mod auth;
pub mod body;
pub mod dashboard;
pub mod events_api;
pub mod handlers;
pub mod home;
pub mod jobs_api;
pub mod mirrors_api;
pub mod openapi;
pub mod recorder;
pub mod request_metrics;
pub mod response;
pub mod router;
pub mod state;

pub use router::router;
pub use state::AppState;

#[cfg(test)]
mod tests;
