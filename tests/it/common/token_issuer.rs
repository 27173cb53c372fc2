//! A small bearer-token issuer for the registry's token auth mode (docker token spec,
//! distribution 2.8 rules: ES256 JWT with an `x5c` header, string `aud`, integer times).
//!
//! It is the auth server, not a registry stand-in: the registry that checks its tokens is
//! the real `docker-registry`. Tests can read what it was asked and make tokens expire.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::json;

/// `service` the registry is configured with; must equal the token's `aud`.
pub const SERVICE: &str = "imagersync-test-registry";
/// Lifetime every token answer promises, in seconds.
const ADVERTISED_LIFETIME: i64 = 300;
/// `issuer` the registry is configured with; must equal the token's `iss`.
pub const ISSUER: &str = "imagersync-test-issuer";

struct Shared {
    user: String,
    pass: String,
    key_der: Vec<u8>,
    cert_b64: String,
    /// Seconds added to `exp`; distribution allows 60 s of leeway, so -60 makes a token
    /// that expires `expires_in` seconds after issue really expire then.
    exp_offset: AtomicI64,
    /// Real lifetime of a token, in seconds.
    lifetime: AtomicI64,
    requests: AtomicUsize,
    issued: Mutex<Vec<String>>,
    scopes: Mutex<Vec<String>>,
    /// The refresh token (Docker's identity token) the OAuth2 POST accepts, if any.
    refresh_token: Mutex<Option<String>>,
    /// Grant types of the POSTs answered (`refresh_token`, ...).
    grants: Mutex<Vec<String>>,
}

/// A running token issuer; stops with the test's runtime.
#[derive(Clone)]
pub struct TokenIssuer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cert_pem: String,
}

impl TokenIssuer {
    /// Starts an issuer granting everything asked to `user:pass` (and to nobody else).
    pub async fn start(user: &str, pass: &str) -> TokenIssuer {
        let key = rcgen::KeyPair::generate().expect("EC key");
        let cert = rcgen::CertificateParams::new(vec!["token-issuer".to_owned()])
            .expect("cert params")
            .self_signed(&key)
            .expect("self-signed cert");
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            pass: pass.to_owned(),
            key_der: key.serialize_der(),
            cert_b64: base64::engine::general_purpose::STANDARD.encode(cert.der()),
            exp_offset: AtomicI64::new(0),
            lifetime: AtomicI64::new(ADVERTISED_LIFETIME),
            requests: AtomicUsize::new(0),
            issued: Mutex::default(),
            scopes: Mutex::default(),
            refresh_token: Mutex::default(),
            grants: Mutex::default(),
        });
        let app = Router::new()
            .route("/token", get(issue).post(issue_oauth))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind token issuer");
        let addr = listener.local_addr().expect("issuer address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenIssuer {
            addr,
            shared,
            cert_pem: cert.pem(),
        }
    }

    /// The realm URL to configure in the registry.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// PEM of the signing certificate: the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Token requests answered so far (granted or refused).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every token issued so far, to check none of them leaks.
    pub fn issued(&self) -> Vec<String> {
        self.shared.issued.lock().unwrap().clone()
    }

    /// Every scope asked for so far.
    pub fn scopes(&self) -> Vec<String> {
        self.shared.scopes.lock().unwrap().clone()
    }

    /// Accepts `refresh_token` in the OAuth2 POST flow (`grant_type=refresh_token`), as
    /// Docker Hub and ACR accept the identity token `docker login` stored.
    pub fn accept_refresh_token(&self, refresh_token: &str) {
        *self.shared.refresh_token.lock().unwrap() = Some(refresh_token.to_owned());
    }

    /// `grant_type` of every OAuth2 POST answered so far.
    pub fn grants(&self) -> Vec<String> {
        self.shared.grants.lock().unwrap().clone()
    }

    /// Tokens issued from now on really expire `seconds` after issue (the registry's 60 s
    /// leeway removed), while the answer still promises the usual lifetime: the client
    /// only learns it from the registry's 401, as when a long upload outlives its token.
    pub fn expire_early(&self, seconds: i64) {
        self.shared.lifetime.store(seconds, Ordering::SeqCst);
        self.shared.exp_offset.store(-60, Ordering::SeqCst);
    }

    /// Tokens issued from now on live as long as they say again (undoes [`Self::expire_early`]),
    /// for the oracle's reads after the part of a test that needed them short.
    pub fn expire_normally(&self) {
        self.shared
            .lifetime
            .store(ADVERTISED_LIFETIME, Ordering::SeqCst);
        self.shared.exp_offset.store(0, Ordering::SeqCst);
    }
}

async fn issue(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // `scope` may repeat (one per repository), so read the pairs rather than a struct.
    let url = reqwest::Url::parse(&format!("http://issuer/?{}", query.unwrap_or_default()))
        .expect("query parses");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let param = |k: &'static str| {
        pairs
            .iter()
            .filter(move |(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|pair| pair == format!("{}:{}", shared.user, shared.pass));
    if !authorized || param("service").any(|s| s != SERVICE) {
        let body = json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    let scopes: Vec<String> = param("scope").collect();
    grant(&shared, scopes)
}

/// The OAuth2 token endpoint (distribution docs/spec/auth/oauth.md): a form POST with
/// `grant_type=refresh_token`, `refresh_token`, `client_id`, `service` and a
/// space-separated `scope`.
async fn issue_oauth(State(shared): State<Arc<Shared>>, body: String) -> Response {
    let pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("http://issuer/?{body}"))
        .expect("form parses")
        .query_pairs()
        .into_owned()
        .collect();
    let field = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let grant_type = field("grant_type");
    shared.grants.lock().unwrap().push(grant_type.clone());
    let expected = shared.refresh_token.lock().unwrap().clone();
    let ok = grant_type == "refresh_token"
        && expected.is_some_and(|t| t == field("refresh_token"))
        && !field("client_id").is_empty()
        && field("service") == SERVICE;
    if !ok {
        let body = json!({"error": "invalid_grant"});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    let scopes: Vec<String> = field("scope")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    grant(&shared, scopes)
}

/// Signs a token granting `scopes` and answers it in both spellings.
fn grant(shared: &Shared, scopes: Vec<String>) -> Response {
    let access: Vec<_> = scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    shared.scopes.lock().unwrap().extend(scopes);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let lifetime = shared.lifetime.load(Ordering::SeqCst);
    let claims = json!({
        "iss": ISSUER, "sub": shared.user, "aud": SERVICE,
        "exp": now + lifetime + shared.exp_offset.load(Ordering::SeqCst),
        "nbf": now - 1, "iat": now, "jti": format!("{now}-{}", shared.requests.load(Ordering::SeqCst)),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![shared.cert_b64.clone()]);
    let key = jsonwebtoken::EncodingKey::from_ec_der(&shared.key_der);
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign token");
    shared.issued.lock().unwrap().push(token.clone());
    Json(json!({"token": token, "access_token": token, "expires_in": ADVERTISED_LIFETIME}))
        .into_response()
}
