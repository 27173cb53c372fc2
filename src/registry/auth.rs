//! Registry authentication: the `WWW-Authenticate` challenge and bearer tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::secret::Secret;

/// How a registry wants to be authenticated, as learnt from its last challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// No challenge seen yet, or the registry answered without one.
    None,
    /// HTTP Basic on every request.
    Basic,
    /// Bearer tokens from `realm` for `service`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter to send to the realm, if the registry named one.
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` header value; unknown schemes give `None`.
    pub fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::None;
        }
        let params = parse_params(rest);
        match params.get("realm") {
            Some(realm) if !realm.is_empty() => Challenge::Bearer {
                realm: realm.clone(),
                service: params.get("service").cloned(),
            },
            _ => Challenge::None,
        }
    }
}

/// Parses `k="v", k2=v2` auth-params; quoted values may hold commas and escaped quotes.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
}

/// A bearer token and when it stops being usable.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: Secret,
    expires_at: Instant,
}

impl Token {
    /// A token used as it is (a configured registry token); it never expires here.
    pub(crate) fn fixed(value: Secret) -> Token {
        Token {
            value,
            expires_at: Instant::now() + Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// Answer of a token endpoint (docker token spec: `token` or `access_token`).
#[derive(serde::Deserialize)]
pub(crate) struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The OAuth2 answer to a refresh-token grant also counts as a token answer; a new
/// `refresh_token` in it is ignored: the configured identity token stays the source.
pub(crate) const CLIENT_ID: &str = "imagersync";

/// Whether a refusal says the login itself expired: ECR answers 403 "Your authorization
/// token has expired. Reauthenticate and try again." rather than 401.
pub(crate) fn says_token_expired(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("token has expired") || text.contains("token is expired")
}

impl TokenAnswer {
    /// The token with an expiry a little before the issuer's, so it is never sent stale.
    pub(crate) fn into_token(self) -> Option<Token> {
        let value = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        // The docker token spec says tokens last at least 60 s when expires_in is absent.
        let lifetime = Duration::from_secs(self.expires_in.unwrap_or(60).max(1));
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        Some(Token {
            value: Secret::new(value),
            expires_at: Instant::now() + lifetime - margin,
        })
    }
}

/// Bearer tokens by scope, shared by every sync that uses the same registry client.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<String, Token>>,
}

impl TokenCache {
    /// A token for `scope` that has not expired yet.
    pub(crate) async fn get(&self, scope: &str) -> Option<Token> {
        let tokens = self.tokens.lock().await;
        tokens
            .get(scope)
            .filter(|t| t.expires_at > Instant::now())
            .cloned()
    }

    /// Remembers a token for `scope`.
    pub(crate) async fn put(&self, scope: &str, token: Token) {
        let mut tokens = self.tokens.lock().await;
        tokens.retain(|_, t| t.expires_at > Instant::now());
        tokens.insert(scope.to_owned(), token);
    }

    /// Forgets the token for `scope` after the registry rejected it.
    pub(crate) async fn forget(&self, scope: &str) {
        self.tokens.lock().await.remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let cases = [
            (
                r#"Bearer realm="http://127.0.0.1:5001/token",service="test-registry",scope="repository:a/b:pull""#,
                Challenge::Bearer {
                    realm: "http://127.0.0.1:5001/token".into(),
                    service: Some("test-registry".into()),
                },
            ),
            (
                r#"bearer realm="https://auth.example.com/t?x=1,2", error="invalid_token""#,
                Challenge::Bearer {
                    realm: "https://auth.example.com/t?x=1,2".into(),
                    service: None,
                },
            ),
            (r#"Basic realm="basic-realm""#, Challenge::Basic),
            ("Bearer", Challenge::None),
            ("Negotiate abc", Challenge::None),
            ("", Challenge::None),
        ];
        for (header, want) in cases {
            assert_eq!(Challenge::parse(header), want, "{header}");
        }
    }

    #[test]
    fn knows_expired_token_answers() {
        let ecr = br#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired. Reauthenticate and try again."}]}"#;
        assert!(says_token_expired(ecr));
        assert!(says_token_expired(b"token is expired"));
        assert!(!says_token_expired(br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#));
        assert!(!says_token_expired(b""));
    }

    #[test]
    fn token_answer_prefers_token_and_keeps_a_margin() {
        let a: TokenAnswer =
            serde_json::from_str(r#"{"access_token":"b","token":"a","expires_in":300}"#).unwrap();
        let t = a.into_token().unwrap();
        assert_eq!(t.value.expose(), "a");
        assert!(t.expires_at < Instant::now() + Duration::from_secs(300));
        let empty: TokenAnswer = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(empty.into_token().is_none());
    }
}
