//! HTTP Basic authentication against `rsyncserver.auth`.
//!
//! Written by hand rather than with axum-extra's `TypedHeader<Authorization<Basic>>`,
//! which answers 400 to a missing or malformed header and only knows the scheme spelled
//! `Basic`. Here every problem is a 401, the scheme is case-insensitive (RFC 9110 §11.1),
//! and the check is constant-time. Passwords in the config may be plain text or bcrypt
//! hashes (`htpasswd -nbB`); see [`UserTable`]. Repeated failures from one address are
//! damped with 429 ([`super::damping`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio::sync::Semaphore;

use super::response::{
    announces_body, close_connection, retry_after_seconds, set_retry_after, Outcome, SyncResponse,
};
use super::state::AppState;
use crate::config::checks::{check_password_entry, is_bcrypt_hash};
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

/// How a configured password is kept.
enum StoredPassword {
    /// SHA-256 of a plain-text password, compared in constant time.
    Plain([u8; 32]),
    /// A bcrypt hash, checked with `bcrypt::verify`.
    Bcrypt(String),
}

struct UserEntry {
    user: [u8; 32],
    password: StoredPassword,
}

/// Most remembered successful bcrypt logins.
const VERIFIED_CAPACITY: usize = 1024;
/// How long a successful bcrypt login is remembered; afterwards it is verified again.
const VERIFIED_TTL: Duration = Duration::from_secs(10 * 60);

/// Successful bcrypt verifications, keyed by SHA-256(user:password), so a CI job's
/// repeated calls cost one bcrypt run per [`VERIFIED_TTL`] instead of one per request.
/// Only ever holds credentials that were right; never printed (no `Debug`).
struct VerifiedCache {
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

impl VerifiedCache {
    fn key(credentials: &Credentials) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(credentials.user.as_bytes());
        hasher.update(b":");
        hasher.update(credentials.password.expose().as_bytes());
        hasher.finalize().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn contains(&self, key: &[u8; 32], now: Instant) -> bool {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(&at) if now.saturating_duration_since(at) < VERIFIED_TTL => true,
            Some(_) => {
                entries.remove(key);
                false
            }
            None => false,
        }
    }

    fn insert(&self, key: [u8; 32], now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= VERIFIED_CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, at| now.saturating_duration_since(*at) < VERIFIED_TTL);
            if entries.len() >= VERIFIED_CAPACITY {
                let oldest = entries.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(key, now);
    }
}

/// The configured service users: plain passwords kept only as SHA-256 digests, bcrypt
/// hashes as given.
///
/// Hashing first gives fixed-length inputs to the constant-time comparison, so neither
/// the length nor the content of a guess shows in the timing. When any user has a bcrypt
/// hash, every login that the plain comparison does not accept runs exactly one bcrypt
/// verification: against the user's hash, or against a dummy hash of the same cost for
/// an unknown user or a plain-text user's wrong password (as distribution's htpasswd
/// does), so the time taken does not tell which users exist.
pub struct UserTable {
    entries: Vec<UserEntry>,
    /// Hash verified when the user has no bcrypt entry; `None` when no user has one.
    dummy: Option<String>,
    verified: VerifiedCache,
    bcrypt_runs: AtomicU64,
    bcrypt_gate: Semaphore,
}

impl std::fmt::Debug for UserTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hashed = self
            .entries
            .iter()
            .filter(|e| matches!(e.password, StoredPassword::Bcrypt(_)))
            .count();
        write!(
            f,
            "UserTable({} users, {hashed} with bcrypt hashes)",
            self.entries.len()
        )
    }
}

fn sha256(data: &str) -> [u8; 32] {
    Sha256::digest(data.as_bytes()).into()
}

impl UserTable {
    /// Builds the table from `rsyncserver.auth` (user → password or bcrypt hash).
    pub fn new(users: &BTreeMap<String, Secret>) -> Self {
        let mut entries: Vec<_> = users
            .iter()
            .map(|(user, password)| {
                let password = password.expose();
                let password = if is_bcrypt_hash(password) && check_password_entry(password).is_ok()
                {
                    StoredPassword::Bcrypt(password.to_owned())
                } else {
                    StoredPassword::Plain(sha256(password))
                };
                UserEntry {
                    user: sha256(user),
                    password,
                }
            })
            .collect();
        if entries.is_empty() {
            // A placeholder nobody can match (no string hashes to all zeroes), so the
            // comparison below always does some work, even with no users configured.
            entries.push(UserEntry {
                user: [0; 32],
                password: StoredPassword::Plain([0; 32]),
            });
        }
        // The dummy costs as much as the dearest configured hash: an unknown user must
        // not answer faster than a known one.
        let dummy_cost = entries
            .iter()
            .filter_map(|e| match &e.password {
                StoredPassword::Bcrypt(hash) => {
                    hash.parse::<bcrypt::HashParts>().ok().map(|p| p.get_cost())
                }
                StoredPassword::Plain(_) => None,
            })
            .max();
        let dummy = dummy_cost.and_then(|cost| {
            bcrypt::hash_with_salt("imagersync dummy password", cost, *b"imagersync-dummy")
                .ok()
                .map(|parts| parts.format_for_version(bcrypt::Version::TwoB))
        });
        Self {
            entries,
            dummy,
            verified: VerifiedCache {
                entries: Mutex::new(HashMap::new()),
            },
            bcrypt_runs: AtomicU64::new(0),
            bcrypt_gate: Semaphore::new(
                std::thread::available_parallelism().map_or(4, std::num::NonZero::get),
            ),
        }
    }

    /// True when some user has a bcrypt hash, so a check may take a bcrypt run (tens of
    /// milliseconds): callers on an async runtime should verify on a blocking thread.
    pub fn is_slow(&self) -> bool {
        self.dummy.is_some()
    }

    /// Bounds bcrypt verifications running at once to the number of CPUs, so a burst of
    /// logins queues (cheaply, as futures) instead of taking every blocking thread.
    pub fn bcrypt_gate(&self) -> &Semaphore {
        &self.bcrypt_gate
    }

    /// bcrypt verifications run so far (successful ones are cached); for tests and metrics.
    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// True when `credentials` match a configured user.
    ///
    /// Compares against every entry and folds the results with `|` on `Choice`, never
    /// leaving the loop early, so the time taken is the same whichever user (or none)
    /// matches. Only a right plain-text password skips the bcrypt step: its speed tells
    /// nothing to someone who does not already know the password.
    pub fn verify(&self, credentials: &Credentials) -> bool {
        let user = sha256(&credentials.user);
        let password = sha256(credentials.password.expose());
        let mut matched = Choice::from(0);
        let mut hashed_user = Choice::from(0);
        let mut hashed_index = 0u32;
        for (i, entry) in self.entries.iter().enumerate() {
            let same_user = user.as_slice().ct_eq(&entry.user);
            match &entry.password {
                StoredPassword::Plain(known) => {
                    matched |= same_user & password.as_slice().ct_eq(known);
                }
                StoredPassword::Bcrypt(_) => {
                    // Never more than u32::MAX users: the config is a YAML map in memory.
                    hashed_index.conditional_assign(&(i as u32), same_user);
                    hashed_user |= same_user;
                }
            }
        }
        if bool::from(matched) {
            return true;
        }
        let Some(dummy) = &self.dummy else {
            return false;
        };
        let now = Instant::now();
        let key = VerifiedCache::key(credentials);
        if self.verified.contains(&key, now) {
            return true;
        }
        let hashed_user = bool::from(hashed_user);
        let hash = match &self.entries[hashed_index as usize].password {
            StoredPassword::Bcrypt(hash) if hashed_user => hash,
            _ => dummy,
        };
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let right = bcrypt::verify(credentials.password.expose(), hash).unwrap_or(false);
        let ok = right && hashed_user;
        if ok {
            self.verified.insert(key, now);
        }
        ok
    }

    /// Parses the header and verifies it: the authenticated user, or why not (with the
    /// attempted user name when the header was well-formed, for the log).
    pub fn check(
        &self,
        header: Option<&HeaderValue>,
    ) -> Result<AuthUser, (AuthFailure, Option<String>)> {
        let credentials = parse_basic(header).map_err(|f| (f, None))?;
        if self.verify(&credentials) {
            Ok(AuthUser(credentials.user))
        } else {
            Err((AuthFailure::Rejected, Some(credentials.user)))
        }
    }

    /// Parses the header and verifies it: the authenticated user, or why not.
    pub fn authenticate(&self, header: Option<&HeaderValue>) -> Result<AuthUser, AuthFailure> {
        self.check(header).map_err(|(failure, _)| failure)
    }
}

/// Longest attempted user name written to the log; the rest is cut.
const LOGGED_USER_LEN: usize = 64;

/// Where the request came from, when the server recorded it (not in in-process tests).
fn client_ip(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_canonical())
}

/// Middleware for the sync routes: a 401 in the seed shape unless the Basic credentials
/// match, a 429 while the client address is damped after failed logins (see
/// [`super::damping`]). It runs before the handler's body extractor, so a refused
/// request's body is never read, however large.
pub async fn require_basic_auth(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = client_ip(&request);
    if let Some(ip) = ip {
        if let Err(wait) = state.login_damping().check(ip, Instant::now()) {
            let seconds = retry_after_seconds(wait);
            tracing::warn!(
                client = %ip,
                retry_after_s = seconds,
                path = request.uri().path(),
                "login refused: too many failed logins from this address"
            );
            let mut response = SyncResponse::refused_login(
                Outcome::TooManyLogins,
                &format!("too many failed logins from your address: try again in {seconds} s"),
            )
            .into_response();
            set_retry_after(&mut response, wait);
            if announces_body(request.headers()) {
                close_connection(&mut response, request.version());
            }
            return response;
        }
    }
    let header = request.headers().get(AUTHORIZATION).cloned();
    let access = state.access();
    let checked = if access.users.is_slow() {
        // bcrypt takes tens of milliseconds of CPU: keep it off the async workers, and
        // run no more at once than there are CPUs. The semaphore is never closed.
        let _permit = access.users.bcrypt_gate().acquire().await.ok();
        let access = access.clone();
        tokio::task::spawn_blocking(move || access.users.check(header.as_ref()))
            .await
            .unwrap_or(Err((AuthFailure::Rejected, None)))
    } else {
        access.users.check(header.as_ref())
    };
    match checked {
        Ok(user) => {
            // The request's span (access_log) carries the user into every line it logs.
            tracing::Span::current().record("user", user.0.as_str());
            request.extensions_mut().insert(user.clone());
            let mut response = next.run(request).await;
            response.extensions_mut().insert(user);
            response
        }
        Err((failure, attempted)) => {
            // A request without credentials is not a guess (clients often try that first).
            if failure != AuthFailure::Missing {
                if let Some(ip) = ip {
                    state.login_damping().record_failure(ip, Instant::now());
                }
            }
            // Never the header or the password. The attempted user name is quoted and
            // escaped by `?`, so it cannot forge a log line, and cut to a sane length.
            let attempted: Option<String> =
                attempted.map(|u| u.chars().take(LOGGED_USER_LEN).collect());
            tracing::warn!(
                reason = ?failure,
                user = ?attempted.as_deref().unwrap_or(""),
                client = %ip.map(|ip| ip.to_string()).unwrap_or_default(),
                path = request.uri().path(),
                "authentication failed"
            );
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

    /// Cost 4, the least bcrypt allows, keeps the tests fast; the logic is the same.
    fn bcrypt_hash(password: &str, version: bcrypt::Version) -> String {
        bcrypt::hash_with_result(password, 4)
            .unwrap()
            .format_for_version(version)
    }

    fn mixed_table() -> UserTable {
        let mut users = BTreeMap::new();
        users.insert("plain".to_owned(), Secret::new("plainpw"));
        users.insert(
            "b2a".to_owned(),
            Secret::new(bcrypt_hash("secret-a", bcrypt::Version::TwoA)),
        );
        users.insert(
            "b2b".to_owned(),
            Secret::new(bcrypt_hash("pa:ss", bcrypt::Version::TwoB)),
        );
        users.insert(
            "b2y".to_owned(),
            Secret::new(bcrypt_hash("secret-y", bcrypt::Version::TwoY)),
        );
        UserTable::new(&users)
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_owned(),
            password: Secret::new(password),
        }
    }

    #[test]
    fn bcrypt_and_plain_table() {
        let users = mixed_table();
        assert!(users.is_slow());
        let cases = [
            ("plain", "plainpw", true),
            ("plain", "plainpw2", false),
            ("b2a", "secret-a", true),
            ("b2b", "pa:ss", true),
            ("b2y", "secret-y", true),
            ("b2y", "secret-a", false),
            ("b2y", "", false),
            ("b2a", "secret-y", false),
            // The hash itself is not the password.
            ("b2y", &users_hash(&users, "b2y"), false),
            ("B2Y", "secret-y", false),
            ("nobody", "secret-y", false),
            ("nobody", "plainpw", false),
        ];
        for (user, password, want) in cases {
            assert_eq!(
                users.verify(&creds(user, password)),
                want,
                "{user}:{password}"
            );
        }
    }

    fn users_hash(users: &UserTable, name: &str) -> String {
        let user = sha256(name);
        users
            .entries
            .iter()
            .find_map(|e| match &e.password {
                StoredPassword::Bcrypt(h) if e.user == user => Some(h.clone()),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn every_refusal_costs_one_bcrypt_run_and_successes_are_cached() {
        let users = mixed_table();
        let runs = |f: &dyn Fn()| {
            let before = users.bcrypt_runs();
            f();
            users.bcrypt_runs() - before
        };
        // Unknown user, wrong bcrypt password, wrong plain password: one run each, so
        // none answers faster than another.
        assert_eq!(runs(&|| assert!(!users.verify(&creds("nobody", "x")))), 1);
        assert_eq!(runs(&|| assert!(!users.verify(&creds("b2y", "x")))), 1);
        assert_eq!(runs(&|| assert!(!users.verify(&creds("plain", "x")))), 1);
        // A right plain password needs none.
        assert_eq!(
            runs(&|| assert!(users.verify(&creds("plain", "plainpw")))),
            0
        );
        // A right bcrypt password: one run, then cached.
        assert_eq!(
            runs(&|| assert!(users.verify(&creds("b2y", "secret-y")))),
            1
        );
        for _ in 0..5 {
            assert_eq!(
                runs(&|| assert!(users.verify(&creds("b2y", "secret-y")))),
                0
            );
        }
        // The cache holds only what was right: a wrong password still runs bcrypt, and
        // another user's right password does not open this user.
        assert_eq!(
            runs(&|| assert!(!users.verify(&creds("b2y", "secret-a")))),
            1
        );
        assert_eq!(
            runs(&|| assert!(!users.verify(&creds("b2a", "secret-y")))),
            1
        );
    }

    #[test]
    fn cache_is_bounded_and_expires() {
        let cache = VerifiedCache {
            entries: Mutex::new(HashMap::new()),
        };
        let t0 = Instant::now();
        for i in 0..(VERIFIED_CAPACITY as u32 + 100) {
            let key: [u8; 32] = Sha256::digest(i.to_be_bytes()).into();
            cache.insert(key, t0 + Duration::from_millis(u64::from(i)));
            assert!(cache.lock().len() <= VERIFIED_CAPACITY);
        }
        let last = VERIFIED_CAPACITY as u32 + 99;
        let newest: [u8; 32] = Sha256::digest(last.to_be_bytes()).into();
        let inserted = t0 + Duration::from_millis(u64::from(last));
        assert!(cache.contains(&newest, inserted + VERIFIED_TTL - Duration::from_secs(1)));
        assert!(!cache.contains(&newest, inserted + VERIFIED_TTL), "expired");
        assert!(
            !cache.lock().contains_key(&newest),
            "expired entries are dropped"
        );
    }

    #[test]
    fn dummy_hash_costs_as_much_as_the_dearest_user() {
        let mut users = BTreeMap::new();
        users.insert("a".to_owned(), Secret::new(bcrypt::hash("a", 4).unwrap()));
        users.insert("b".to_owned(), Secret::new(bcrypt::hash("b", 6).unwrap()));
        let table = UserTable::new(&users);
        let dummy: bcrypt::HashParts = table.dummy.as_deref().unwrap().parse().unwrap();
        assert_eq!(dummy.get_cost(), 6);
        let plain_only = table_with_plain_only();
        assert!(plain_only.dummy.is_none() && !plain_only.is_slow());
    }

    fn table_with_plain_only() -> UserTable {
        table()
    }

    #[test]
    fn config_entries_with_a_bcrypt_prefix_must_be_whole_hashes() {
        let good = bcrypt_hash("x", bcrypt::Version::TwoY);
        assert_eq!(check_password_entry(&good), Ok(()));
        assert_eq!(check_password_entry("plain password"), Ok(()));
        assert_eq!(
            check_password_entry("$1$md5crypt"),
            Ok(()),
            "not a bcrypt prefix"
        );
        for bad in [
            good[..good.len() - 1].to_owned(),
            "$2y$10$tooshort".to_owned(),
            good.replacen("$04$", "$xx$", 1),
            good.replacen("$04$", "$03$", 1),
            good.replacen("$04$", "$32$", 1),
        ] {
            assert!(check_password_entry(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_shows_no_hash_or_password() {
        let users = mixed_table();
        let text = format!("{users:?}");
        assert!(!text.contains("$2"), "{text}");
        assert!(!text.contains("plainpw"), "{text}");
        assert!(text.contains("4 users"), "{text}");
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
