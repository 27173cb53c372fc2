//! Docker's `config.json` and the containers `auth.json`: which login they give for a
//! repository, in Docker's order (credHelpers, then credsStore, then auths), with Docker
//! Hub's aliases and the containers/image `registry/namespace` keys (longest match wins).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::{helper_server, Login, Source};
use crate::secret::Secret;

/// One `auths` entry as Docker writes it.
#[derive(Debug, Clone, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<Secret>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    identitytoken: Option<Secret>,
    #[serde(default)]
    registrytoken: Option<Secret>,
}

/// The file's JSON; unknown keys (`HttpHeaders`, `psFormat`, ...) are Docker's business.
#[derive(Debug, Default, Deserialize)]
struct FileJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// A parsed auth file, keys normalised for matching.
#[derive(Debug)]
pub struct AuthFile {
    path: PathBuf,
    /// `host[:port]` or `host[:port]/namespace` → entry.
    auths: Vec<(String, AuthEntry)>,
    /// `host[:port]` → helper suffix.
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
}

impl AuthFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<AuthFile, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("auth file {}: cannot read it: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses file content; `path` is for messages and logs only.
    pub fn parse(text: &[u8], path: &Path) -> Result<AuthFile, String> {
        let not_ours = |e: String| {
            format!(
                "auth file {}: not a Docker config.json / containers auth.json: {e}",
                path.display()
            )
        };
        // serde would take `[]` for a struct; the file must be an object.
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| not_ours(e.to_string()))?;
        if !value.is_object() {
            return Err(not_ours("not a JSON object".into()));
        }
        let file: FileJson = serde_json::from_value(value).map_err(|e| not_ours(e.to_string()))?;
        Ok(AuthFile {
            path: path.to_owned(),
            auths: file
                .auths
                .into_iter()
                .map(|(k, v)| (normalise_key(&k), v))
                .collect(),
            cred_helpers: file
                .cred_helpers
                .into_iter()
                .map(|(k, v)| (normalise_key(&k), v))
                .collect(),
            creds_store: file.creds_store.filter(|s| !s.is_empty()),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A one-line summary for the start-up log (counts and helper names, no secret).
    pub fn summary(&self) -> String {
        let mut helpers: Vec<&str> = self.cred_helpers.values().map(String::as_str).collect();
        helpers.sort_unstable();
        helpers.dedup();
        format!(
            "auth file {}: {} auths, credHelpers [{}], credsStore {}",
            self.path.display(),
            self.auths.len(),
            helpers.join(", "),
            self.creds_store.as_deref().unwrap_or("none")
        )
    }

    /// The source for `repository` at `registry` (`docker.io` for Docker Hub) and how it
    /// was found, e.g. `credHelpers[reg]`; `None` when the file says nothing about it.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<(Source, String)> {
        let helper = |name: &str| Source::Helper {
            name: name.to_owned(),
            server: helper_server(registry),
        };
        if let Some(name) = self.cred_helpers.get(registry) {
            return Some((helper(name), format!("credHelpers[{registry}]")));
        }
        if let Some(name) = &self.creds_store {
            return Some((helper(name), "credsStore".into()));
        }
        let full = format!("{registry}/{repository}");
        let (key, entry) = self
            .auths
            .iter()
            .filter(|(k, _)| full == *k || full.starts_with(&format!("{k}/")))
            .max_by_key(|(k, _)| k.len())?;
        let login = entry_login(entry)?;
        Some((Source::Fixed(login), format!("auths[{key}]")))
    }
}

/// The login of an `auths` entry, in go-containerregistry's order: a registry token is
/// sent as is, an identity token is exchanged, else user and password. `None` for an
/// entry that holds nothing (Docker leaves those behind when a credsStore keeps the rest).
fn entry_login(entry: &AuthEntry) -> Option<Login> {
    let non_empty = |s: &Option<Secret>| s.clone().filter(|s| !s.expose().is_empty());
    if let Some(t) = non_empty(&entry.registrytoken) {
        return Some(Login::RegistryToken(t));
    }
    if let Some(t) = non_empty(&entry.identitytoken) {
        return Some(Login::IdentityToken(t));
    }
    if let Some(auth) = non_empty(&entry.auth) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.expose().trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())?;
        let (user, pass) = decoded.split_once(':')?;
        return Some(Login::Basic {
            username: user.to_owned(),
            password: Secret::new(pass.trim_end_matches('\0')),
        });
    }
    match (&entry.username, non_empty(&entry.password)) {
        (Some(user), Some(password)) if !user.is_empty() => Some(Login::Basic {
            username: user.clone(),
            password,
        }),
        _ => None,
    }
}

/// A key as Docker and containers/image write it, reduced to `host[:port][/namespace]`:
/// a key with a scheme is a legacy URL whose path is dropped (Docker's
/// `ConvertToHostname`), Docker Hub's aliases fold to `docker.io`.
pub(crate) fn normalise_key(key: &str) -> String {
    let key = key.trim();
    let key = match key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
    {
        Some(rest) => rest.split('/').next().unwrap_or_default(),
        None => key,
    };
    crate::registry::pool::normalise_prefix(key)
}

/// The auth file the CLI reads when the config names none, where skopeo and docker look:
/// `REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`
/// or `~/.docker/config.json`; the first that exists.
pub fn discover_auth_file() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let candidates = [
        env("REGISTRY_AUTH_FILE"),
        env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")),
        env("DOCKER_CONFIG")
            .map(|d| d.join("config.json"))
            .or_else(|| env("HOME").map(|h| h.join(".docker/config.json"))),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn what(file: &AuthFile, registry: &str, repo: &str) -> String {
        match file.lookup(registry, repo) {
            None => "none".into(),
            Some((Source::Helper { name, server }, how)) => {
                format!("helper {name} {server} ({how})")
            }
            Some((Source::Fixed(login), how)) => match login {
                Login::Basic { username, password } => {
                    format!("basic {username}:{} ({how})", password.expose())
                }
                other => format!("{other:?} ({how})"),
            },
            Some((other, how)) => format!("{other:?} ({how})"),
        }
    }

    #[test]
    fn lookup_order_follows_docker() {
        let with_store = format!(
            r#"{{"auths": {{"reg.example.com": {{"auth": "{}"}}}},
                "credHelpers": {{"123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login", "https://index.docker.io/v1/": "hub"}},
                "credsStore": "pass"}}"#,
            b64("u:p")
        );
        let no_store = format!(
            r#"{{"auths": {{
                "reg.example.com": {{"auth": "{}"}},
                "reg.example.com/team": {{"username": "t", "password": "tp"}},
                "reg.example.com/team/app": {{"identitytoken": "refresh"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "http://legacy.example.com/v1/": {{"auth": "{}"}},
                "tok.example.com": {{"registrytoken": "bearer", "identitytoken": "x", "auth": "{}"}},
                "empty.example.com": {{"auth": ""}},
                "Upper.Example.com:5000": {{"auth": "{}"}}
              }},
              "credHelpers": {{"gcr.io": "gcr"}}}}"#,
            b64("u:p"),
            b64("hubuser:hub:pw\0"),
            b64("old:o"),
            b64("a:b"),
            b64("up:x"),
        );
        let store = AuthFile::parse(with_store.as_bytes(), Path::new("s.json")).unwrap();
        let plain = AuthFile::parse(no_store.as_bytes(), Path::new("p.json")).unwrap();
        let cases: &[(&AuthFile, &str, &str, &str)] = &[
            // credHelpers beats credsStore beats auths.
            (&store, "123.dkr.ecr.eu-west-1.amazonaws.com", "app", "helper ecr-login 123.dkr.ecr.eu-west-1.amazonaws.com (credHelpers[123.dkr.ecr.eu-west-1.amazonaws.com])"),
            (&store, "reg.example.com", "app", "helper pass reg.example.com (credsStore)"),
            // Docker Hub's key folds to docker.io, and the helper is asked under the old URL.
            (&store, "docker.io", "library/nginx", "helper hub https://index.docker.io/v1/ (credHelpers[docker.io])"),
            (&plain, "gcr.io", "p/app", "helper gcr gcr.io (credHelpers[gcr.io])"),
            // Longest registry/namespace key wins; whole path components only.
            (&plain, "reg.example.com", "team/app", "Login(identity token) (auths[reg.example.com/team/app])"),
            (&plain, "reg.example.com", "team/app2", "basic t:tp (auths[reg.example.com/team])"),
            (&plain, "reg.example.com", "teams/app", "basic u:p (auths[reg.example.com])"),
            // Password split at the first ':' and trailing NULs trimmed, as Docker does.
            (&plain, "docker.io", "library/nginx", "basic hubuser:hub:pw (auths[docker.io])"),
            (&plain, "legacy.example.com", "x", "basic old:o (auths[legacy.example.com])"),
            // registrytoken beats identitytoken beats auth.
            (&plain, "tok.example.com", "x", "Login(registry token) (auths[tok.example.com])"),
            (&plain, "empty.example.com", "x", "none"),
            (&plain, "upper.example.com:5000", "x", "basic up:x (auths[upper.example.com:5000])"),
            (&plain, "other.example.com", "x", "none"),
        ];
        for (file, registry, repo, want) in cases {
            assert_eq!(what(file, registry, repo), *want, "{registry}/{repo}");
        }
        assert!(!format!("{plain:?}").contains("tp"));
        assert!(store.summary().contains("credsStore pass"));
    }

    #[test]
    fn bad_files_are_refused_with_the_path() {
        for text in ["", "[]", "{\"auths\": []}"] {
            let err = AuthFile::parse(text.as_bytes(), Path::new("/x/config.json")).unwrap_err();
            assert!(err.contains("/x/config.json"), "{err}");
        }
    }
}
