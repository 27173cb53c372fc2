//! The optional platform filter: keeps only some entries of an index. The index is then
//! rewritten, so its digest differs from the source's; without a filter nothing changes.

use serde_json::Value;

use crate::config::checks::{parse_platform_patterns, task_platform_patterns, PlatformPattern};
use crate::registry::digest::digest_of;
use crate::registry::media::Platform;
use crate::registry::Manifest;

/// Which platforms to keep: `os`, `os/arch` or `os/arch/variant` patterns, where `*` or an
/// empty part matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformFilter {
    patterns: Vec<PlatformPattern>,
}

impl PlatformFilter {
    /// A filter from `os/arch[/variant]` patterns; `None` when there is nothing to filter.
    pub fn from_patterns(patterns: &[String]) -> Result<Option<Self>, String> {
        let parsed = parse_platform_patterns(patterns)?;
        Ok((!parsed.is_empty()).then_some(Self { patterns: parsed }))
    }

    /// The filter of the config's `task.os` × `task.arch` lists (`arch` may hold a variant).
    pub fn from_task(os: &[String], arch: &[String]) -> Result<Option<Self>, String> {
        Self::from_patterns(&task_platform_patterns(os, arch))
    }

    /// Whether an entry of `platform` is kept; entries without a platform are dropped.
    pub fn keeps(&self, platform: Option<&Platform>) -> bool {
        let Some(p) = platform else { return false };
        let fields = [
            Some(p.os.as_str()),
            Some(p.architecture.as_str()),
            p.variant.as_deref(),
        ];
        self.patterns.iter().any(|pattern| {
            pattern
                .iter()
                .zip(fields)
                .all(|(want, have)| want.as_deref().is_none_or(|w| Some(w) == have))
        })
    }

    /// The index without the entries the filter drops: new bytes, new digest. `None` when
    /// the index is not JSON with a `manifests` list.
    pub fn apply(&self, index: &Manifest) -> Option<(Manifest, usize)> {
        let mut value: Value = serde_json::from_slice(&index.bytes).ok()?;
        let entries = value.get_mut("manifests")?.as_array_mut()?;
        let before = entries.len();
        entries.retain(|entry| {
            let platform = entry
                .get("platform")
                .and_then(|p| serde_json::from_value::<Platform>(p.clone()).ok());
            self.keeps(platform.as_ref())
        });
        let kept = entries.len();
        let bytes = bytes::Bytes::from(serde_json::to_vec(&value).ok()?);
        let digest = digest_of(&bytes, &index.digest);
        Some((
            Manifest {
                bytes,
                media_type: index.media_type.clone(),
                digest,
            },
            before - kept,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn matches_patterns() {
        let f = PlatformFilter::from_patterns(&["linux/arm64".into(), "linux/arm/v7".into()])
            .unwrap()
            .unwrap();
        assert!(f.keeps(Some(&platform("linux", "arm64", Some("v8")))));
        assert!(f.keeps(Some(&platform("linux", "arm", Some("v7")))));
        assert!(!f.keeps(Some(&platform("linux", "arm", Some("v6")))));
        assert!(!f.keeps(Some(&platform("linux", "amd64", None))));
        assert!(!f.keeps(Some(&platform("unknown", "unknown", None))));
        assert!(!f.keeps(None));
        assert!(PlatformFilter::from_patterns(&[]).unwrap().is_none());
        assert!(PlatformFilter::from_patterns(&["a/b/c/d".into()]).is_err());
        assert!(PlatformFilter::from_patterns(&["linux amd64".into()]).is_err());
        let t = PlatformFilter::from_task(&[], &["amd64".into()])
            .unwrap()
            .unwrap();
        assert!(t.keeps(Some(&platform("windows", "amd64", None))));
        assert!(PlatformFilter::from_task(&[], &[]).unwrap().is_none());
    }

    #[test]
    fn rewrites_the_index() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"digest":"sha256:a","platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:b","platform":{"os":"linux","architecture":"arm64"}}]}"#;
        let m = Manifest {
            bytes: bytes::Bytes::from_static(index),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            digest: "sha256:old".into(),
        };
        let f = PlatformFilter::from_patterns(&["linux/arm64".into()])
            .unwrap()
            .unwrap();
        let (out, dropped) = f.apply(&m).unwrap();
        assert_eq!(dropped, 1);
        assert!(!String::from_utf8_lossy(&out.bytes).contains("sha256:a"));
        assert_eq!(out.digest, digest_of(&out.bytes, "sha256:"));
    }
}
