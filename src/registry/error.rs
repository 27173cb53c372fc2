//! Errors of registry access: each names the registry, the step and the cause.

use std::time::Duration;

/// What went wrong while talking to one registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No answer: DNS, TCP, TLS, timeout or a connection cut mid-transfer.
    #[error("registry {registry}: {step}: {cause} (is the registry reachable from this host, and is `insecure` set right for http?)")]
    Network {
        /// host[:port] of the registry.
        registry: String,
        /// What the engine was doing.
        step: String,
        /// The transport error, without URLs' query strings.
        cause: String,
    },
    /// The TLS handshake failed over a certificate: the registry's, or the client
    /// certificate it asks for. The cause says which, why, and which option fixes it.
    #[error("registry {registry}: {step}: {cause}")]
    Certificate {
        /// host[:port] of the registry.
        registry: String,
        /// What the engine was doing.
        step: String,
        /// What is wrong with which certificate, and what to do.
        cause: String,
    },
    /// The registry answered with an error status.
    #[error("registry {registry}: {step}: HTTP {status}{detail}{}", status_hint(*.status))]
    Status {
        /// host[:port] of the registry.
        registry: String,
        /// What the engine was doing.
        step: String,
        /// HTTP status code.
        status: u16,
        /// The registry's error code (`MANIFEST_BLOB_UNKNOWN`, ...), if it sent one.
        code: Option<String>,
        /// The registry's own error code and message, if it sent any, prefixed with ": ".
        detail: String,
        /// `Retry-After` of a 429 or 503 answer.
        retry_after: Option<Duration>,
    },
    /// The registry asked for credentials that were refused or missing.
    #[error("registry {registry}: {step}: authentication failed: {cause} (check the credentials for this registry in rsyncserver.rsyncconfig.auth)")]
    Auth {
        /// host[:port] of the registry.
        registry: String,
        /// What the engine was doing.
        step: String,
        /// Why.
        cause: String,
    },
    /// The registry's token endpoint (its `realm`) failed to issue a token: no answer, a
    /// server error, an answer too large or not a token. Never turned into an anonymous
    /// request, which would hide this cause behind a later 401.
    #[error("registry {registry}: {step}: getting a token from the token endpoint {realm}: {cause}{}", if *.transient { " (the registry's token service is failing; try again later)" } else { " (the registry's token service answered something that is not a token)" })]
    TokenEndpoint {
        /// host[:port] of the registry.
        registry: String,
        /// What the engine was doing.
        step: String,
        /// host[:port] of the token endpoint.
        realm: String,
        /// Why.
        cause: String,
        /// Whether trying again may pass (no answer, 5xx, 429, 408).
        transient: bool,
    },
    /// The registry sent something that breaks the protocol or our limits.
    #[error("registry {registry}: {step}: {cause}")]
    Protocol {
        /// host[:port] of the registry.
        registry: String,
        /// What the engine was doing.
        step: String,
        /// Why.
        cause: String,
    },
    /// A token accepted moments before was refused: it expired during a long transfer.
    #[error("registry {registry}: {step}: the access token expired during the transfer")]
    TokenExpired {
        /// host[:port] of the registry.
        registry: String,
        /// What the engine was doing.
        step: String,
    },
    /// The registry's rate limit (Docker Hub's pull quota, or a 429's `Retry-After`) asks
    /// for a longer wait than this sync may wait: it fails now instead of timing out.
    #[error("registry {registry}: {step}: rate limited: {cause}; that wait ({}s) is longer than this sync may wait ({}s): run it again after that, or as an asynchronous job, which waits for the quota", .wait.as_secs(), .limit.as_secs())]
    RateLimited {
        /// host[:port] of the registry.
        registry: String,
        /// What the engine was about to do.
        step: String,
        /// What the registry announced.
        cause: String,
        /// The wait the registry asks for.
        wait: Duration,
        /// The longest this sync may wait.
        limit: Duration,
    },
    /// Content whose digest differs from the one its descriptor promised.
    #[error("registry {registry}: {step}: digest mismatch: expected {expected}, got {actual}; the source served corrupt content, nothing was written for it")]
    DigestMismatch {
        /// host[:port] of the registry that served the bytes.
        registry: String,
        /// What the engine was doing.
        step: String,
        /// The digest the descriptor or reference named.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
}

impl RegistryError {
    /// Whether trying again may succeed (network trouble, 5xx, 429, 408).
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Network { .. } | RegistryError::TokenExpired { .. } => true,
            RegistryError::TokenEndpoint { transient, .. } => *transient,
            RegistryError::Status { status, code, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
                    // Registries backed by eventually consistent storage may not see a
                    // blob pushed a moment ago when the manifest arrives.
                    || (*status == 400 && code.as_deref() == Some("MANIFEST_BLOB_UNKNOWN"))
            }
            _ => false,
        }
    }

    /// Whether the registry's rate limit stopped this: a 429, or a wait longer than the
    /// sync may wait.
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            RegistryError::RateLimited { .. } | RegistryError::Status { status: 429, .. }
        )
    }

    /// The wait a registry asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A low-cardinality name for why a retryable step failed, for metrics. Only errors
    /// `is_retryable` accepts are ever counted; the rest share one name so that the label
    /// set documented in doc/api.md stays exactly the causes that are retried.
    pub fn retry_cause(&self) -> &'static str {
        match self {
            RegistryError::Network { .. } => "network",
            RegistryError::TokenExpired { .. } => "token_expired",
            RegistryError::Status { status: 429, .. } => "rate_limited",
            RegistryError::Status { status: 400, .. } => "blob_unknown",
            RegistryError::Status { status: 408, .. } => "timeout",
            RegistryError::Status { .. } => "server_error",
            RegistryError::TokenEndpoint { .. } => "token_endpoint",
            // Never retried (see is_retryable): a bad answer, refused credentials, a
            // refused certificate, or a blob whose bytes do not match its digest will not
            // improve by asking again.
            RegistryError::Auth { .. }
            | RegistryError::Certificate { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::RateLimited { .. }
            | RegistryError::DigestMismatch { .. } => "not_retried",
        }
    }

    /// host[:port] of the registry the error is about.
    pub fn registry(&self) -> &str {
        match self {
            RegistryError::Network { registry, .. }
            | RegistryError::Status { registry, .. }
            | RegistryError::Certificate { registry, .. }
            | RegistryError::Auth { registry, .. }
            | RegistryError::TokenEndpoint { registry, .. }
            | RegistryError::Protocol { registry, .. }
            | RegistryError::TokenExpired { registry, .. }
            | RegistryError::RateLimited { registry, .. }
            | RegistryError::DigestMismatch { registry, .. } => registry,
        }
    }

    /// The HTTP status the registry answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Shortens a transport error to its causes, dropping URL query strings that may carry state.
pub(crate) fn describe_transport_error(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "cannot connect".to_owned()
    } else if err.is_body() || err.is_decode() {
        "connection broke while transferring data".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = err.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !s.is_empty() && !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}

/// A short hint for common statuses, so the error says what to do.
pub(crate) fn status_hint(status: u16) -> &'static str {
    match status {
        401 => ". Check the credentials for this registry in rsyncserver.rsyncconfig.auth",
        403 => ". The credentials for this registry lack permission for this repository",
        404 => ". Check that the repository, tag or digest exists",
        405 => ". The registry refuses writes here (read-only or a pull-through cache?)",
        429 => ". The registry is rate limiting; try again later",
        // distribution answers a full disk with a bare 500 UNKNOWN: name the usual cause.
        500 => ". The registry had an internal error (its log says why; a full disk is a common cause); try again later",
        502..=504 => ". The registry, or a proxy in front of it, is unavailable; try again later",
        507 => ". The registry's storage is full; free space there, then try again",
        501..=599 => ". The registry had an internal error; try again later",
        _ => "",
    }
}
