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
pub use pool::{transport_of, ClientPool, Resolved};
pub use tls::TlsFiles;
