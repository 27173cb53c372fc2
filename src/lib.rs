//! imagersync: an HTTP service (and CLI) that copies container images between registries.
//!
//! Layers, from the top down: [`cli`] and [`server`] start things ([`listener_tls`] serves
//! HTTPS, [`reload`] re-reads the config on SIGHUP, [`cli_progress`] draws `sync`'s progress), [`http`] serves the API (with [`access`] for scopes and login damping),
//! [`mirrors`] runs configured mirrors on their schedules, [`jobs`] keeps and runs every
//! sync as a job, [`metrics`] counts what the service does for `GET /metrics`, [`engine`] plans and
//! runs syncs, [`registry`] speaks the distribution protocol, [`config`] is plain data with
//! its value checks. Every import points down: the engine never sees axum or jobs, the
//! registry client never sees the engine, config sees nothing above it.

pub mod access;
pub mod analysis_log;
pub mod batch;
pub mod cli;
pub mod cli_progress;
pub mod config;
pub mod engine;
pub mod http;
pub mod jobs;
pub mod listener_tls;
pub mod metrics;
pub mod mirrors;
pub mod registry;
pub mod reload;
pub mod secret;
pub mod server;
