//! imagersync: an HTTP service (and CLI) that copies container images between registries.
//!
//! Layers, from the outside in: [`cli`] parses flags, [`http`] serves the API, [`jobs`]
//! keeps and runs every sync as a job, [`engine`] plans and runs syncs, [`registry`] speaks the distribution protocol;
//! [`metrics`] counts what the service does for `GET /metrics`. Dependencies only
//! point inwards: the engine never sees axum, the registry client never sees the engine.

pub mod analysis_log;
pub mod batch;
pub mod cli;
pub mod config;
pub mod engine;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod registry;
pub mod secret;
pub mod server;
