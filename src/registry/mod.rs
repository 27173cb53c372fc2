//! Registry access: the distribution API over HTTP, with auth, limits and readable errors.
//! Knows nothing of syncs; the engine drives it.

mod auth;
mod client;
pub mod credentials;
pub mod digest;
mod error;
mod limiter;
pub mod media;
mod pool;
pub mod reference;
mod tls;
mod trust;
mod watchdog;

pub(crate) use client::is_internal;
pub use client::{
    BlobCheck, Endpoint, Manifest, RegistryClient, Timeouts, Transport, MAX_MANIFEST_BYTES,
};
pub(crate) use error::describe_transport_error;
pub use error::RegistryError;
pub use limiter::{PauseFuture, SharedPauses};
pub use pool::{transport_of, ClientPool, Resolved};
pub use tls::TlsFiles;

/// The `User-Agent` of every request imagersync makes (registries, webhooks). Push
/// events whose `request.useragent` starts with `imagersync/` are its own writes.
pub const USER_AGENT: &str = concat!("imagersync/", env!("CARGO_PKG_VERSION"));
