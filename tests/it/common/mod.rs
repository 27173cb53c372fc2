//! The integration-test rig: real registries, images built in-process, skopeo as the
//! independent oracle, and the service binary started on a free port.
//!
//! Every test gets its own registries, ports and temp directories, so tests run in
//! parallel safely. Nothing here is a mock: the registry is Debian's `docker-registry`
//! (distribution 2.8) and the checks go through `skopeo`. A missing tool is a panic
//! with the command that installs it, never a silent skip.

#![allow(dead_code, unused_imports)]

pub mod cases;
pub mod contract;
pub mod cred_helper;
pub mod engine;
pub mod fault_proxy;
pub mod fixture;
pub mod image;
pub mod net;
pub mod postgres;
pub mod process;
pub mod push;
pub mod registry;
pub mod schema;
pub mod service;
pub mod skopeo;
pub mod tls;
pub mod tmpfs;
pub mod token_issuer;
pub mod tools;
pub mod wait;
pub mod webdriver;
pub mod webhook;

pub use cases::Cases;
pub use image::{Format, Image, Index, Layer, Platform};
pub use push::{Pushed, StreamedBlob};
pub use registry::{Creds, Registry};
pub use service::{Service, ServiceConfig};
pub use token_issuer::TokenIssuer;
pub use wait::wait_for;
pub use webdriver::Browser;
