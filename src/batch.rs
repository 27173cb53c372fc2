//! image-syncer's own files, so operators moving over keep them: an auth file
//! (`registry[/namespace]: {username, password, insecure}`) and an images file
//! (`source rule: target` or `source rule: [targets]`), YAML or JSON. The old combined
//! `--config` form (`{auth: …, images: …}`) is read from the images file too.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::{ConfigError, RegistryCredential};
use crate::engine::SyncRequest;
use crate::secret::Secret;

/// One entry of an image-syncer auth file.
#[derive(Debug, Clone, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    insecure: bool,
}

/// A target, or a list of targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Targets {
    One(String),
    Many(Vec<String>),
}

/// The combined image-syncer config (`--config` in image-syncer).
#[derive(Debug, Deserialize)]
struct Combined {
    #[serde(default)]
    auth: BTreeMap<String, AuthEntry>,
    images: BTreeMap<String, Targets>,
}

/// What a batch run needs: registry credentials and the requests, in file order.
#[derive(Debug, Default)]
pub struct Batch {
    /// Credentials keyed like `rsyncserver.rsyncconfig.auth`.
    pub credentials: BTreeMap<String, RegistryCredential>,
    /// One request per source rule.
    pub requests: Vec<SyncRequest>,
}

/// Reads an images file and an optional auth file.
pub fn load(images: &Path, auth: Option<&Path>) -> Result<Batch, ConfigError> {
    let images_text = read(images)?;
    let mut batch = Batch::default();
    let images_value = parse_value(&images_text, images)?;
    let is_combined = images_value
        .as_mapping()
        .is_some_and(|m| m.contains_key("images"));
    let image_map = if is_combined {
        let combined: Combined = from_value(images_value, images)?;
        add_credentials(&mut batch, combined.auth, images);
        combined.images
    } else {
        from_value(images_value, images)?
    };
    if let Some(auth) = auth {
        let entries: BTreeMap<String, AuthEntry> =
            from_value(parse_value(&read(auth)?, auth)?, auth)?;
        add_credentials(&mut batch, entries, auth);
    }
    if image_map.is_empty() {
        return Err(ConfigError::Invalid {
            path: images.to_owned(),
            key: "images".into(),
            message: "no images to sync".into(),
        });
    }
    batch.requests = image_map
        .into_iter()
        .map(|(source, targets)| SyncRequest {
            source,
            targets: match targets {
                Targets::One(t) => vec![t],
                Targets::Many(ts) => ts,
            },
            ..SyncRequest::default()
        })
        .collect();
    Ok(batch)
}

fn add_credentials(batch: &mut Batch, entries: BTreeMap<String, AuthEntry>, file: &Path) {
    for (registry, entry) in entries {
        let name = format!("{}:{registry}", file.display());
        batch.credentials.insert(
            name,
            RegistryCredential {
                registry,
                username: entry.username,
                password: entry.password,
                insecure: entry.insecure,
                ..RegistryCredential::default()
            },
        );
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_value(text: &str, path: &Path) -> Result<serde_yaml_ng::Value, ConfigError> {
    let mut value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    crate::config::expand_env(&mut value, "").map_err(|(key, var)| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message: format!("environment variable {var} is not set"),
    })?;
    Ok(value)
}

fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_yaml_ng::Value,
    path: &Path,
) -> Result<T, ConfigError> {
    serde_yaml_ng::from_value(value).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_image_syncer_files() {
        let dir = std::env::temp_dir().join(format!("imagersync-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let images = write(
            &dir,
            "images.yaml",
            "quay.io/coreos/kube-rbac-proxy: quay.io/ruohe/kube-rbac-proxy\n\
             quay.io/coreos/kube-rbac-proxy:v1.0,v2.0: quay.io/ruohe/kube-rbac-proxy\n\
             quay.io/coreos/kube-rbac-proxy:v1.1:\n  - quay.io/ruohe/a\n  - quay.io/ruohe/b\n",
        );
        std::env::set_var("IMAGERSYNC_BATCH_PW", "from-env");
        let auth = write(
            &dir,
            "auth.json",
            r#"{"quay.io": {"username": "xxx", "password": "${IMAGERSYNC_BATCH_PW}", "insecure": true},
                "quay.io/coreos": {"username": "abc", "password": "p"}}"#,
        );
        let batch = load(&images, Some(&auth)).unwrap();
        assert_eq!(batch.requests.len(), 3);
        let multi = batch
            .requests
            .iter()
            .find(|r| r.source.ends_with(":v1.1"))
            .unwrap();
        assert_eq!(multi.targets, ["quay.io/ruohe/a", "quay.io/ruohe/b"]);
        let quay = batch
            .credentials
            .values()
            .find(|c| c.registry == "quay.io")
            .unwrap();
        assert_eq!(quay.password.as_ref().unwrap().expose(), "from-env");
        assert!(quay.insecure);

        let combined = write(
            &dir,
            "config.yaml",
            "auth: {h.io: {username: u, password: p}}\nimages: {h.io/a:v1: g.io/a}\n",
        );
        let batch = load(&combined, None).unwrap();
        assert_eq!(batch.requests.len(), 1);
        assert_eq!(batch.credentials.len(), 1);

        let empty = write(&dir, "empty.yaml", "{}\n");
        assert!(load(&empty, None)
            .unwrap_err()
            .to_string()
            .contains("no images"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
