//! Every integration suite in one test binary: each links the whole dependency tree, so
//! one binary instead of fifteen saves most of a fresh build's link time.
//!
//! Run one suite with `cargo test --test it <suite>::` (e.g. `cargo test --test it sync::`).
//! The shared rig is [`common`]; see `tests/README.md`.

mod common;

mod api;
mod bad_input;
mod bench_script;
mod cli;
mod credentials;
mod dashboard;
mod demo_cluster_script;
mod engine;
mod events;
mod faults;
mod faults_more;
mod jobs;
mod listener_tls;
mod load_script;
mod memory;
mod metrics;
mod mirrors;
mod openapi;
mod packaging;
mod posture;
mod referrers;
mod registry_tls;
mod reload;
mod replicas;
mod rig;
mod security;
mod service_faults;
mod service_more;
mod soak_script;
mod sync;
