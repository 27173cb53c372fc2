//! Which registries the service may contact, decided before any connection: public hosts
//! (unless a strict list is configured), and internal addresses only when listed.

use crate::config::RsyncConfig;
use crate::registry::is_internal;

/// The registries a request may name.
pub(crate) struct AllowList {
    /// `host[:port]` of every `auth` entry and every `allowed_registries` entry.
    listed: Vec<String>,
    /// `allowed_registries` was given: nothing unlisted is allowed.
    strict: bool,
}

impl AllowList {
    /// The allow-list of the `rsyncconfig` section.
    pub(crate) fn new(config: &RsyncConfig) -> Self {
        let hosts = config.auth.values().map(|c| c.registry.as_str());
        let listed = hosts
            .chain(config.allowed_registries.iter().map(String::as_str))
            .map(|r| {
                let host = r.trim().split('/').next().unwrap_or_default();
                crate::registry::reference::normalise_host(host)
            })
            .collect();
        Self {
            listed,
            strict: !config.allowed_registries.is_empty(),
        }
    }

    /// `Ok` when `registry` (normalised `host[:port]`) may be contacted.
    pub(crate) fn check(&self, registry: &str) -> Result<(), String> {
        if self.listed.iter().any(|l| l == registry) {
            return Ok(());
        }
        let (host, _) = crate::registry::reference::split_host_port(registry);
        let internal = host == "localhost"
            || host.ends_with(".localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| is_internal(&ip));
        if internal {
            return Err(format!(
                "registry {registry} is not allowed: it is an internal address; list it in rsyncserver.rsyncconfig.allowed_registries or give it an entry in rsyncserver.rsyncconfig.auth"
            ));
        }
        if self.strict {
            return Err(format!(
                "registry {registry} is not allowed: it is not in rsyncserver.rsyncconfig.allowed_registries or rsyncserver.rsyncconfig.auth"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryCredential;

    fn list(auth: &[&str], allowed: &[&str]) -> AllowList {
        let mut config = RsyncConfig::default();
        for (i, r) in auth.iter().enumerate() {
            config.auth.insert(
                format!("e{i}"),
                RegistryCredential {
                    registry: r.to_string(),
                    ..RegistryCredential::default()
                },
            );
        }
        config.allowed_registries = allowed.iter().map(|s| s.to_string()).collect();
        AllowList::new(&config)
    }

    #[test]
    fn internal_addresses_need_listing() {
        let open = list(&["127.0.0.1:5000/team"], &[]);
        assert!(open.check("127.0.0.1:5000").is_ok());
        assert!(open.check("registry.example.com").is_ok());
        assert!(open.check("docker.io").is_ok());
        for refused in [
            "127.0.0.1:6379",
            "169.254.169.254",
            "10.0.0.5",
            "localhost:5000",
            "192.168.1.1:443",
            "[::1]:5000",
            "[fe80::1]",
        ] {
            let err = open.check(refused).unwrap_err();
            assert!(
                err.contains(refused) && err.contains("allowed_registries"),
                "{err}"
            );
        }
        let strict = list(
            &["Reg.Example.com"],
            &["10.0.0.5:5000", "mirror.example.com"],
        );
        assert!(strict.check("reg.example.com").is_ok());
        assert!(strict.check("10.0.0.5:5000").is_ok());
        assert!(strict.check("mirror.example.com").is_ok());
        assert!(strict.check("docker.io").is_err());
        assert!(strict.check("10.0.0.5:5001").is_err());
    }
}
