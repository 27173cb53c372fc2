//! Refuses the passwords everybody knows on an open port: a service user whose password
//! is the user's own name, or a value shipped in `configs/config.yaml` (`admin: admin`,
//! the `change-me` of its bcrypt example). Such a service is open to anyone who can
//! reach it, so on an address other hosts can reach it must not start; on loopback (a
//! newcomer's first run, the demo, the tests) it only warns.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::checks::is_bcrypt_hash;
use crate::secret::Secret;

/// The shipped config, compiled in so the list of known passwords follows the file.
const SHIPPED_CONFIG: &str = include_str!("../../configs/config.yaml");

/// The password of the bcrypt example in the shipped config's comments.
const SHIPPED_EXAMPLE_PASSWORD: &str = "change-me";

/// Service users (names only) whose password anyone could guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPasswords {
    /// The users, sorted.
    pub users: Vec<String>,
}

impl DefaultPasswords {
    /// The users of `auth` whose password (plain, or the one a bcrypt hash stands for)
    /// is their own name or a shipped value; `None` when there are none.
    pub fn find(auth: &BTreeMap<String, Secret>) -> Option<Self> {
        let shipped = shipped_passwords();
        let users: Vec<String> = auth
            .iter()
            .filter(|(user, secret)| {
                let mut guesses = shipped.iter().map(String::as_str).chain([user.as_str()]);
                let stored = secret.expose();
                if is_bcrypt_hash(stored) {
                    guesses.any(|guess| bcrypt::verify(guess, stored).unwrap_or(false))
                } else {
                    guesses.any(|guess| guess == stored)
                }
            })
            .map(|(user, _)| user.clone())
            .collect();
        (!users.is_empty()).then_some(Self { users })
    }

    /// The start-up refusal (or, on loopback, warning) text: who, and how to fix it.
    pub fn message(&self, address: SocketAddr) -> String {
        let first = &self.users[0];
        format!(
            "service user(s) {} have a default password (the user's own name or a value from the shipped configs/config.yaml) \
             and {address} is reachable from other hosts: set a password for each under rsyncserver.auth, \
             e.g. `{first}: \"${{IMAGERSYNC_{}_PASSWORD}}\"` read from the environment, or a bcrypt hash from \
             `htpasswd -nbB {first} 'a-long-password'`; or listen on loopback only (--address 127.0.0.1:8080)",
            self.users.join(", "),
            env_name(first),
        )
    }
}

/// Whether only this host can connect to `address`.
pub fn is_loopback(address: SocketAddr) -> bool {
    address.ip().is_loopback()
}

/// The plain passwords of the shipped config's `rsyncserver.auth`, and its example's.
fn shipped_passwords() -> Vec<String> {
    let parsed: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(SHIPPED_CONFIG).unwrap_or(serde_yaml_ng::Value::Null);
    let mut values: Vec<String> = parsed["rsyncserver"]["auth"]
        .as_mapping()
        .map(|users| {
            users
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    values.push(SHIPPED_EXAMPLE_PASSWORD.to_owned());
    values
}

/// `jenkins-ci` -> `JENKINS_CI`, for the environment variable in the hint.
fn env_name(user: &str) -> String {
    user.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
        pairs
            .iter()
            .map(|(u, p)| ((*u).to_owned(), Secret::new(*p)))
            .collect()
    }

    #[test]
    fn known_passwords_are_found_plain_or_hashed() {
        let hash_of_name = bcrypt::hash("jenkins", 4).unwrap();
        let hash_of_change_me = bcrypt::hash("change-me", 4).unwrap();
        let strong = bcrypt::hash("k3#long-and-random", 4).unwrap();
        for (pairs, want) in [
            (vec![("admin", "admin")], vec!["admin"]),
            (vec![("ci", "ci")], vec!["ci"]),
            (vec![("ci", "admin")], vec!["ci"]),
            (vec![("ci", "change-me")], vec!["ci"]),
            (vec![("jenkins", hash_of_name.as_str())], vec!["jenkins"]),
            (vec![("x", hash_of_change_me.as_str())], vec!["x"]),
            (vec![("x", strong.as_str()), ("y", "s3cret-y-2026")], vec![]),
            (vec![("admin", "Admin")], vec![]),
        ] {
            let found = DefaultPasswords::find(&auth(&pairs)).map(|d| d.users);
            let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(found.unwrap_or_default(), want, "{pairs:?}");
        }
    }

    #[test]
    fn the_message_names_users_and_the_fix_but_no_password() {
        let found = DefaultPasswords::find(&auth(&[("admin", "admin")])).unwrap();
        let text = found.message("0.0.0.0:8080".parse().unwrap());
        for part in [
            "admin",
            "rsyncserver.auth",
            "IMAGERSYNC_ADMIN_PASSWORD",
            "htpasswd -nbB",
            "127.0.0.1",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert!(is_loopback("127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback("[::1]:1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0:1".parse().unwrap()));
        assert!(!is_loopback("[::]:1".parse().unwrap()));
    }
}
