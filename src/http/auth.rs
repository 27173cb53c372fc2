//! HTTP Basic authentication against `rsyncserver.auth`.
//!
//! Written by hand rather than with axum-extra's `TypedHeader<Authorization<Basic>>`,
//! which answers 400 to a missing or malformed header and only knows the scheme spelled
//! `Basic`. Here every problem is a 401, the scheme is case-insensitive (RFC 9110 §11.1),
//! and the check is constant-time.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::response::{announces_body, close_connection, SyncResponse};
use super::state::AppState;
use crate::secret::Secret;

/// The authenticated caller, put into request extensions (for handlers) and response
/// extensions (for the access log) by [`require_basic_auth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser(pub String);

/// Credentials taken from an `Authorization: Basic …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (before the first colon).
    pub user: String,
    /// The password (after the first colon; may itself hold colons).
    pub password: Secret,
}

/// Why a request did not authenticate; each maps to one fixed 401 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header, or one with another scheme (`Bearer`, `Digest`).
    Missing,
    /// A Basic header whose payload is not base64 of UTF-8 `user:password` with a user.
    Malformed,
    /// Well-formed credentials that match no configured user. Unknown user and wrong
    /// password are deliberately the same case.
    Rejected,
}

impl AuthFailure {
    /// The `rsync_error` text of the 401; says nothing about which users exist.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "authentication is required: send HTTP Basic credentials (curl -u user:password)"
            }
            Self::Malformed => {
                "authentication failed: the Authorization header is not valid HTTP Basic credentials (base64 of user:password)"
            }
            Self::Rejected => "authentication failed: wrong user name or password",
        }
    }
}

/// Reads Basic credentials from an `Authorization` header value.
pub fn parse_basic(header: Option<&HeaderValue>) -> Result<Credentials, AuthFailure> {
    let header = header.ok_or(AuthFailure::Missing)?;
    // Header bytes outside visible ASCII cannot be a valid Basic header.
    let text = header.to_str().map_err(|_| AuthFailure::Malformed)?.trim();
    let (scheme, payload) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthFailure::Missing);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|_| AuthFailure::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| AuthFailure::Malformed)?;
    // RFC 7617: the user name cannot hold a colon, the password can.
    let (user, password) = decoded.split_once(':').ok_or(AuthFailure::Malformed)?;
    if user.is_empty() {
        return Err(AuthFailure::Malformed);
    }
    Ok(Credentials {
        user: user.to_owned(),
        password: Secret::new(password),
    })
}

/// The configured service users, kept only as SHA-256 digests.
///
/// Hashing first gives fixed-length inputs to the constant-time comparison, so neither
/// the length nor the content of a guess shows in the timing.
pub struct UserTable {
    entries: Vec<([u8; 32], [u8; 32])>,
}

impl std::fmt::Debug for UserTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserTable({} users)", self.entries.len())
    }
}

fn sha256(data: &str) -> [u8; 32] {
    Sha256::digest(data.as_bytes()).into()
}

impl UserTable {
    /// Builds the table from `rsyncserver.auth` (user → password).
    pub fn new(users: &BTreeMap<String, Secret>) -> Self {
        let mut entries: Vec<_> = users
            .iter()
            .map(|(user, password)| (sha256(user), sha256(password.expose())))
            .collect();
        if entries.is_empty() {
            // A placeholder nobody can match (no string hashes to all zeroes), so the
            // comparison below always does some work, even with no users configured.
            entries.push(([0; 32], [0; 32]));
        }
        Self { entries }
    }

    /// True when `credentials` match a configured user.
    ///
    /// Compares against every entry and folds the results with `|` on `Choice`, never
    /// returning early, so the time taken is the same whichever user (or none) matches.
    pub fn verify(&self, credentials: &Credentials) -> bool {
        let user = sha256(&credentials.user);
        let password = sha256(credentials.password.expose());
        let mut matched = Choice::from(0);
        for (known_user, known_password) in &self.entries {
            matched |=
                user.as_slice().ct_eq(known_user) & password.as_slice().ct_eq(known_password);
        }
        matched.into()
    }

    /// Parses the header and verifies it: the authenticated user, or why not.
    pub fn authenticate(&self, header: Option<&HeaderValue>) -> Result<AuthUser, AuthFailure> {
        let credentials = parse_basic(header)?;
        if self.verify(&credentials) {
            Ok(AuthUser(credentials.user))
        } else {
            Err(AuthFailure::Rejected)
        }
    }
}

/// Middleware for the sync routes: a 401 in the seed shape unless the Basic credentials
/// match. It runs before the handler's body extractor, so a refused request's body is
/// never read, however large.
pub async fn require_basic_auth(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match state
        .users()
        .authenticate(request.headers().get(AUTHORIZATION))
    {
        Ok(user) => {
            request.extensions_mut().insert(user.clone());
            let mut response = next.run(request).await;
            response.extensions_mut().insert(user);
            response
        }
        Err(failure) => {
            // Logged without the header or the attempted name: either could be a password.
            tracing::warn!(reason = ?failure, path = request.uri().path(), "authentication failed");
            let mut response = SyncResponse::unauthenticated(failure.message()).into_response();
            if announces_body(request.headers()) {
                close_connection(&mut response, request.version());
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &[u8]) -> HeaderValue {
        HeaderValue::from_bytes(value).unwrap()
    }

    fn basic(raw: &[u8]) -> HeaderValue {
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        header(format!("Basic {b64}").as_bytes())
    }

    fn table() -> UserTable {
        let mut users = BTreeMap::new();
        users.insert("admin".to_owned(), Secret::new("admin"));
        users.insert("jenkins".to_owned(), Secret::new("pa:ss:word"));
        UserTable::new(&users)
    }

    #[test]
    fn header_table() {
        use AuthFailure::*;
        let ok = |user: &str| Ok(AuthUser(user.to_owned()));
        let cases: Vec<(&str, Option<HeaderValue>, Result<AuthUser, AuthFailure>)> = vec![
            ("missing", None, Err(Missing)),
            ("bearer", Some(header(b"Bearer x")), Err(Missing)),
            (
                "digest",
                Some(header(b"Digest username=\"admin\"")),
                Err(Missing),
            ),
            ("scheme only", Some(header(b"Basic")), Err(Malformed)),
            ("empty header", Some(header(b"")), Err(Missing)),
            ("good", Some(basic(b"admin:admin")), ok("admin")),
            (
                "lower-case scheme",
                Some(header(b"basic YWRtaW46YWRtaW4=")),
                ok("admin"),
            ),
            (
                "upper-case scheme, extra spaces",
                Some(header(b"BASIC   YWRtaW46YWRtaW4=  ")),
                ok("admin"),
            ),
            ("bad base64", Some(header(b"Basic !!!")), Err(Malformed)),
            ("no colon", Some(basic(b"admin")), Err(Malformed)),
            ("empty user", Some(basic(b":admin")), Err(Malformed)),
            ("non-UTF-8", Some(basic(b"\xff\xfe:pw")), Err(Malformed)),
            (
                "non-ASCII header bytes",
                Some(header(b"Basic \xe4")),
                Err(Malformed),
            ),
            (
                "password with colons",
                Some(basic(b"jenkins:pa:ss:word")),
                ok("jenkins"),
            ),
            ("wrong password", Some(basic(b"admin:nope")), Err(Rejected)),
            ("empty password", Some(basic(b"admin:")), Err(Rejected)),
            ("unknown user", Some(basic(b"root:admin")), Err(Rejected)),
            (
                "user case matters",
                Some(basic(b"Admin:admin")),
                Err(Rejected),
            ),
            (
                "split at first colon only",
                Some(basic(b"jenkins:pa:ss")),
                Err(Rejected),
            ),
        ];
        let users = table();
        for (name, value, expected) in cases {
            assert_eq!(users.authenticate(value.as_ref()), expected, "case {name}");
        }
    }

    #[test]
    fn password_with_colons_parses_whole() {
        let c = parse_basic(Some(&basic(b"u:a:b:c"))).unwrap();
        assert_eq!(c.user, "u");
        assert_eq!(c.password.expose(), "a:b:c");
        assert!(
            !format!("{c:?}").contains("a:b:c"),
            "Debug must redact the password"
        );
    }

    #[test]
    fn unknown_user_and_wrong_password_say_the_same() {
        let users = table();
        let unknown = users
            .authenticate(Some(&basic(b"nobody:admin")))
            .unwrap_err();
        let wrong = users
            .authenticate(Some(&basic(b"admin:wrong")))
            .unwrap_err();
        assert_eq!(unknown, wrong);
        assert_eq!(unknown.message(), wrong.message());
    }

    #[test]
    fn empty_table_matches_nothing() {
        let users = UserTable::new(&BTreeMap::new());
        assert!(!users.verify(&Credentials {
            user: String::new(),
            password: Secret::new(""),
        }));
    }
}
