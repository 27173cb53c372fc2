//! Per-user scopes (`rsyncserver.scopes`): which registries and repositories a service
//! user may sync from and to.
//!
//! A scope is a list of `registry[/path]` prefixes per side. A prefix matches on whole
//! path components: `reg.example.com/team` allows `reg.example.com/team/app` and
//! `reg.example.com/team` itself, but not `reg.example.com/teamx/app`; a bare host allows
//! every repository of that host (and port: `reg:5000` is another registry than `reg`).
//! Users without an entry, and sides an entry leaves out, are not restricted.
//!
//! The check runs on the normalised names the engine itself will use (lower-case host,
//! Docker Hub aliases folded into `docker.io`, implicit `library/`), before the engine
//! runs, so a refused request contacts nothing.

use std::collections::BTreeMap;

pub use crate::config::checks::normalise_prefix;
use crate::config::UserScopeConfig;
use crate::engine::rules::RuleSide;
use crate::engine::SyncRequest;

/// True when `name` (`registry/repository`, normalised) is `prefix` or lies under it.
pub fn prefix_allows(prefix: &str, name: &str) -> bool {
    match name.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// One user's normalised prefixes; `None` for a side means unrestricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UserScope {
    source: Option<Vec<String>>,
    target: Option<Vec<String>>,
}

/// Every configured scope, ready to check requests against.
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    users: BTreeMap<String, UserScope>,
}

impl Scopes {
    /// Builds the scopes from `rsyncserver.scopes`. The config has been validated; a
    /// prefix that still does not normalise (a config built by hand) is dropped, which
    /// only ever allows less.
    pub fn new(config: &BTreeMap<String, UserScopeConfig>) -> Self {
        let side = |prefixes: &Option<Vec<String>>| {
            prefixes.as_ref().map(|list| {
                list.iter()
                    .filter_map(|p| normalise_prefix(p).ok())
                    .collect::<Vec<_>>()
            })
        };
        let users = config
            .iter()
            .map(|(user, scope)| {
                let scope = UserScope {
                    source: side(&scope.source),
                    target: side(&scope.target),
                };
                (user.clone(), scope)
            })
            .collect();
        Self { users }
    }

    /// True when `user` has a scope entry.
    pub fn restricts(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// `Ok` when `user` may run `request`; otherwise one sentence naming the refused
    /// reference and the user. A side that does not parse is left to the engine, which
    /// answers 400 for it without contacting anything.
    pub fn check(&self, user: &str, request: &SyncRequest) -> Result<(), String> {
        let Some(scope) = self.users.get(user) else {
            return Ok(());
        };
        let sides = std::iter::once(("from", "source", &request.source, &scope.source)).chain(
            request
                .targets
                .iter()
                .map(|t| ("to", "target", t, &scope.target)),
        );
        for (direction, key, reference, allowed) in sides {
            let Some(allowed) = allowed else { continue };
            let Ok(side) = RuleSide::parse(reference) else {
                continue;
            };
            let name = side.image.name();
            if !allowed.iter().any(|prefix| prefix_allows(prefix, &name)) {
                return Err(format!(
                    "user {user} may not sync {direction} {name}: rsyncserver.scopes.{user}.{key} \
                     allows only {}",
                    allowed.join(", ")
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_table() {
        let cases = [
            // (prefix, name, allowed)
            ("reg.example.com/team", "reg.example.com/team/app", true),
            ("reg.example.com/team", "reg.example.com/team/sub/app", true),
            ("reg.example.com/team", "reg.example.com/team", true),
            ("reg.example.com/team", "reg.example.com/teamx/app", false),
            ("reg.example.com/team", "reg.example.com/tea", false),
            (
                "reg.example.com/team",
                "reg.example.com/other/team/app",
                false,
            ),
            (
                "reg.example.com/team",
                "reg.example.com.evil.net/team/app",
                false,
            ),
            ("reg.example.com", "reg.example.com/anything/app", true),
            ("reg.example.com", "reg.example.com:5000/app", false),
            ("reg.example.com", "reg.example.community/app", false),
            ("reg.example.com:5000", "reg.example.com:5000/app", true),
            ("reg.example.com:5000", "reg.example.com:50001/app", false),
            ("reg.example.com/team/app", "reg.example.com/team/app", true),
            (
                "reg.example.com/team/app",
                "reg.example.com/team/app2",
                false,
            ),
        ];
        for (prefix, name, allowed) in cases {
            assert_eq!(prefix_allows(prefix, name), allowed, "{prefix} vs {name}");
        }
    }

    #[test]
    fn prefixes_are_normalised_or_refused() {
        let good = [
            ("reg.example.com/team", "reg.example.com/team"),
            ("REG.Example.com/team/", "reg.example.com/team"),
            ("index.docker.io/library", "docker.io/library"),
            ("registry-1.docker.io", "docker.io"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("localhost/a/b", "localhost/a/b"),
        ];
        for (raw, want) in good {
            assert_eq!(normalise_prefix(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "",
            "team/app",
            "busybox",
            "https://reg.example.com/team",
            "reg.example.com/Team",
            "reg.example.com/team:v1",
            "reg.example.com/team@sha256:abc",
            "reg.example.com//team",
            "reg.example.com/../team",
            "reg.example.com/te am",
            "reg.exa_mple.com/team",
        ] {
            assert!(normalise_prefix(bad).is_err(), "{bad:?} must be refused");
        }
    }

    fn scopes() -> Scopes {
        let mut config = BTreeMap::new();
        config.insert(
            "ci".to_owned(),
            UserScopeConfig {
                source: Some(vec!["build.example.com/team".into()]),
                target: Some(vec![
                    "prod-a.example.com/team".into(),
                    "PROD-B.example.com".into(),
                ]),
            },
        );
        config.insert(
            "pusher".to_owned(),
            UserScopeConfig {
                source: None,
                target: Some(vec!["docker.io/library".into()]),
            },
        );
        Scopes::new(&config)
    }

    fn request(source: &str, targets: &[&str]) -> SyncRequest {
        SyncRequest {
            source: source.to_owned(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            ..SyncRequest::default()
        }
    }

    #[test]
    fn requests_are_checked_per_user_and_side() {
        let scopes = scopes();
        let ok = "build.example.com/team/app:v1";
        let cases: &[(&str, &str, &[&str], Option<&str>)] = &[
            ("ci", ok, &["prod-a.example.com/team/app:v1"], None),
            ("ci", ok, &["prod-b.example.com/any/app"], None),
            ("ci", "build.example.com/team/app:/^v1/", &["prod-b.example.com/x"], None),
            (
                "ci",
                "build.example.com/teamx/app:v1",
                &["prod-a.example.com/team/app:v1"],
                Some("from build.example.com/teamx/app"),
            ),
            (
                "ci",
                ok,
                &["prod-a.example.com/team/app:v1", "prod-a.example.com/other/app:v1"],
                Some("to prod-a.example.com/other/app"),
            ),
            (
                "ci",
                "BUILD.example.com/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                &["prod-b.example.com/app"],
                None,
            ),
            // Unparsable sides are the engine's to refuse (400), not the scope's.
            ("ci", "not a reference", &["prod-a.example.com/team/app"], None),
            // A side the entry leaves out is unrestricted.
            ("pusher", "anywhere.example.com/x:1", &["busybox:1"], None),
            (
                "pusher",
                "anywhere.example.com/x:1",
                &["someone/busybox:1"],
                Some("to docker.io/someone/busybox"),
            ),
            // No entry: unrestricted.
            ("admin", "a.example.com/x:1", &["b.example.com/y:1"], None),
        ];
        for (user, source, targets, refused) in cases {
            let result = scopes.check(user, &request(source, targets));
            match (refused, result) {
                (None, Ok(())) => {}
                (Some(needle), Err(message)) => {
                    assert!(message.contains(needle), "{user} {source}: {message}");
                    assert!(message.contains(&format!("user {user}")), "{message}");
                }
                (want, got) => panic!("{user} {source} {targets:?}: want {want:?}, got {got:?}"),
            }
        }
        assert!(scopes.restricts("ci") && !scopes.restricts("admin"));
    }
}
