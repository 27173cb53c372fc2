//! What changed between two configs, by name only, for the reload log line: user and
//! entry names and registry hosts, never a password, token or hash.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::Config;

/// The differences a reload acts on, and the keys it leaves for a restart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigChanges {
    /// Service users (`rsyncserver.auth`) that are new.
    pub users_added: Vec<String>,
    /// Service users that are gone.
    pub users_removed: Vec<String>,
    /// Service users whose password (or hash) changed.
    pub users_new_password: Vec<String>,
    /// Users whose `rsyncserver.scopes` entry was added, changed or removed.
    pub scopes_changed: Vec<String>,
    /// Users who became admins.
    pub admins_added: Vec<String>,
    /// Users who are no longer admins.
    pub admins_removed: Vec<String>,
    /// `rsyncserver.rsyncconfig.auth` entries that are new.
    pub registries_added: Vec<String>,
    /// Entries that are gone.
    pub registries_removed: Vec<String>,
    /// Entries with any field changed (login, password, TLS options, ...).
    pub registries_changed: Vec<String>,
    /// `allowed_registries` hosts that are new.
    pub allowed_added: Vec<String>,
    /// `allowed_registries` hosts that are gone.
    pub allowed_removed: Vec<String>,
    /// `auth_file` names another file (or none, or one where there was none).
    pub auth_file_path_changed: bool,
    /// `certs_d` names another folder.
    pub certs_d_changed: bool,
    /// Changed keys that are read at start-up only: they apply after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl ConfigChanges {
    /// Compares `old` (running) with `new` (just loaded).
    pub fn between(old: &Config, new: &Config) -> Self {
        let (o, n) = (&old.rsyncserver, &new.rsyncserver);
        let (users_added, users_removed, users_new_password) = map_diff(&o.auth, &n.auth);
        let (s_added, s_removed, s_changed) = map_diff(&o.scopes, &n.scopes);
        let (admins_added, admins_removed) = set_diff(&o.admins, &n.admins);
        let (registries_added, registries_removed, registries_changed) =
            map_diff(&o.rsyncconfig.auth, &n.rsyncconfig.auth);
        let (allowed_added, allowed_removed) = set_diff(
            &o.rsyncconfig.allowed_registries,
            &n.rsyncconfig.allowed_registries,
        );
        let mut scopes_changed: Vec<String> = s_added
            .into_iter()
            .chain(s_removed)
            .chain(s_changed)
            .collect();
        scopes_changed.sort();
        let restart_keys = [
            ("rsyncserver.logfile", o.logfile != n.logfile),
            (
                "rsyncserver.max_concurrent_syncs",
                o.max_concurrent_syncs != n.max_concurrent_syncs,
            ),
            (
                "rsyncserver.login_damping",
                o.login_damping != n.login_damping,
            ),
            ("rsyncserver.jobs", o.jobs != n.jobs),
            ("rsyncserver.mirrors", o.mirrors != n.mirrors),
            ("rsyncserver.events", o.events != n.events),
            ("rsyncserver.tls", o.tls != n.tls),
            (
                "rsyncserver.rsyncconfig.task",
                o.rsyncconfig.task != n.rsyncconfig.task,
            ),
            ("config.tools", old.config != new.config),
        ];
        Self {
            users_added,
            users_removed,
            users_new_password,
            scopes_changed,
            admins_added,
            admins_removed,
            registries_added,
            registries_removed,
            registries_changed,
            allowed_added,
            allowed_removed,
            auth_file_path_changed: o.rsyncconfig.auth_file != n.rsyncconfig.auth_file,
            certs_d_changed: o.rsyncconfig.certs_d != n.rsyncconfig.certs_d,
            needs_restart: restart_keys
                .into_iter()
                .filter(|(_, changed)| *changed)
                .map(|(key, _)| key)
                .collect(),
        }
    }

    /// Service users, their scopes or the admins changed.
    pub fn access_changed(&self) -> bool {
        !(self.users_added.is_empty()
            && self.users_removed.is_empty()
            && self.users_new_password.is_empty()
            && self.scopes_changed.is_empty()
            && self.admins_added.is_empty()
            && self.admins_removed.is_empty())
    }

    /// Registry logins, the auth file's path, `certs_d` or the allowed registries changed.
    pub fn registries_changed(&self) -> bool {
        !(self.registries_added.is_empty()
            && self.registries_removed.is_empty()
            && self.registries_changed.is_empty()
            && self.allowed_added.is_empty()
            && self.allowed_removed.is_empty()
            && !self.auth_file_path_changed
            && !self.certs_d_changed)
    }
}

/// One clause per kind of change, `; `-separated; "no change" when there is none.
impl fmt::Display for ConfigChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lists = [
            ("users added", &self.users_added),
            ("users removed", &self.users_removed),
            ("users with a new password", &self.users_new_password),
            ("scopes changed for", &self.scopes_changed),
            ("admins added", &self.admins_added),
            ("admins removed", &self.admins_removed),
            ("registry entries added", &self.registries_added),
            ("registry entries removed", &self.registries_removed),
            ("registry entries changed", &self.registries_changed),
            ("allowed_registries added", &self.allowed_added),
            ("allowed_registries removed", &self.allowed_removed),
        ];
        let mut parts: Vec<String> = lists
            .into_iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(what, names)| format!("{what} [{}]", names.join(", ")))
            .collect();
        if self.auth_file_path_changed {
            parts.push("auth_file now names another file".into());
        }
        if self.certs_d_changed {
            parts.push("certs_d now names another folder".into());
        }
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// Keys only in `new`, only in `old`, and in both with another value.
fn map_diff<V: PartialEq>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added = new.keys().filter(|k| !old.contains_key(*k)).cloned();
    let removed = old.keys().filter(|k| !new.contains_key(*k)).cloned();
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone());
    (added.collect(), removed.collect(), changed.collect())
}

/// Values only in `new`, and only in `old`.
fn set_diff(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let old: BTreeSet<&String> = old.iter().collect();
    let new: BTreeSet<&String> = new.iter().collect();
    (
        new.difference(&old).map(|s| (*s).clone()).collect(),
        old.difference(&new).map(|s| (*s).clone()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_what_changed_and_never_a_secret() {
        let old = config(
            "rsyncserver:
  auth: {alice: old-secret-1, carol: c-secret, dave: d-secret}
  scopes: {carol: {target: [reg.example.com/team]}}
  admins: [alice]
  rsyncconfig:
    allowed_registries: [a.example.com]
    auth:
      hub: {registry: reg.example.com, username: u, password: reg-secret-1}
      old: {registry: old.example.com}
",
        );
        let new = config(
            "rsyncserver:
  auth: {alice: new-secret-2, bob: b-secret, carol: c-secret}
  scopes: {carol: {target: [reg.example.com/other]}}
  admins: [bob]
  max_concurrent_syncs: 3
  rsyncconfig:
    allowed_registries: [b.example.com]
    auth:
      hub: {registry: reg.example.com, username: u, password: reg-secret-2}
      new: {registry: new.example.com}
",
        );
        let changes = ConfigChanges::between(&old, &new);
        assert_eq!(changes.users_added, ["bob"]);
        assert_eq!(changes.users_removed, ["dave"]);
        assert_eq!(changes.users_new_password, ["alice"]);
        assert_eq!(changes.scopes_changed, ["carol"]);
        assert_eq!(changes.admins_added, ["bob"]);
        assert_eq!(changes.admins_removed, ["alice"]);
        assert_eq!(changes.registries_added, ["new"]);
        assert_eq!(changes.registries_removed, ["old"]);
        assert_eq!(changes.registries_changed, ["hub"]);
        assert_eq!(changes.allowed_added, ["b.example.com"]);
        assert_eq!(changes.allowed_removed, ["a.example.com"]);
        assert_eq!(changes.needs_restart, ["rsyncserver.max_concurrent_syncs"]);
        assert!(changes.access_changed() && changes.registries_changed());
        let line = changes.to_string();
        assert!(line.contains("users added [bob]"), "{line}");
        assert!(line.contains("registry entries changed [hub]"), "{line}");
        for secret in ["secret-1", "secret-2", "b-secret", "c-secret"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        let same = ConfigChanges::between(&new, &new);
        assert_eq!(same.to_string(), "no change");
        assert!(!same.access_changed() && !same.registries_changed());
    }
}
