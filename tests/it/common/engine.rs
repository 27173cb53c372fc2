//! Engines for tests that drive the sync engine as a library.

use std::collections::BTreeMap;

use imagersync::config::{RegistryCredential, RsyncConfig, TaskConfig};
use imagersync::engine::{Engine, SyncReport, SyncStatus};
use imagersync::secret::Secret;

use super::registry::Registry;

/// An engine that reaches each `(host, registry)` over plain HTTP with that registry's
/// credentials; `host` is the registry's own or that of a proxy in front of it.
pub fn engine_for<'a>(
    entries: impl IntoIterator<Item = (String, &'a Registry)>,
    task: TaskConfig,
) -> Engine {
    let auth: BTreeMap<String, RegistryCredential> = entries
        .into_iter()
        .map(|(host, registry)| {
            let credential = RegistryCredential {
                registry: host.clone(),
                username: registry.creds().map(|c| c.user.clone()),
                password: registry.creds().map(|c| Secret::new(c.pass.clone())),
                plain_http: true,
                ..RegistryCredential::default()
            };
            (host, credential)
        })
        .collect();
    Engine::new(&RsyncConfig {
        auth,
        task,
        ..RsyncConfig::default()
    })
}

/// Asserts the sync succeeded, with the log as the message when it did not.
pub fn assert_success(report: &SyncReport) {
    assert_eq!(
        report.status,
        SyncStatus::Successfully,
        "error: {:?}\nlog:\n{}",
        report.error,
        report.log
    );
    assert!(report.error.is_none());
    assert!(report
        .log
        .contains("Finished, 0 sync tasks failed, 0 tasks generate failed"));
}
