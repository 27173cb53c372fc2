//! Ephemeral ports on 127.0.0.1.

use std::net::TcpListener;

/// A port that was free a moment ago: bound on 127.0.0.1:0, then released.
///
/// Another process may take it before the caller binds it, so callers retry on a bind
/// failure (see [`crate::common::registry::Registry`] and the service launcher).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}
