//! A mirror's tag filters, compiled once: semver range, then allow, then deny, then keep
//! the newest N.

use regex::Regex;
use semver::{Version, VersionReq};

use crate::config::TagFilters;

/// The compiled `tags` section of one mirror.
#[derive(Debug, Clone, Default)]
pub struct TagFilter {
    semver: Option<VersionReq>,
    allow: Vec<Regex>,
    deny: Vec<Regex>,
    keep_latest: Option<usize>,
}

/// A tag read as a version: `1.2.3`, `v1.2.3`, `1.2.3-rc.1`.
fn version_of(tag: &str) -> Option<Version> {
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

impl TagFilter {
    /// Compiles the filters; config loading has checked them, so an error here means a
    /// hand-built config.
    pub fn new(config: &TagFilters) -> Result<Self, String> {
        let regexes = |list: &[String]| -> Result<Vec<Regex>, String> {
            list.iter()
                .map(|p| Regex::new(p).map_err(|e| format!("{p:?}: {e}")))
                .collect()
        };
        Ok(Self {
            semver: config
                .semver
                .as_deref()
                .map(VersionReq::parse)
                .transpose()
                .map_err(|e| e.to_string())?,
            allow: regexes(&config.allow)?,
            deny: regexes(&config.deny)?,
            keep_latest: config.keep_latest,
        })
    }

    /// Whether any filter is set (else the source rule selects the tags alone).
    pub fn is_set(&self) -> bool {
        self.semver.is_some()
            || !self.allow.is_empty()
            || !self.deny.is_empty()
            || self.keep_latest.is_some()
    }

    /// Whether keep_latest is set: deciding on one tag then needs the whole listing.
    pub fn needs_listing(&self) -> bool {
        self.keep_latest.is_some()
    }

    /// The semver, allow and deny filters on one tag.
    pub fn admits(&self, tag: &str) -> bool {
        if let Some(range) = &self.semver {
            if !version_of(tag).is_some_and(|v| range.matches(&v)) {
                return false;
            }
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|r| r.is_match(tag)) {
            return false;
        }
        !self.deny.iter().any(|r| r.is_match(tag))
    }

    /// Every filter on a listing; the tags kept stay in the listing's order.
    pub fn apply(&self, tags: Vec<String>) -> Vec<String> {
        let admitted: Vec<String> = tags.into_iter().filter(|t| self.admits(t)).collect();
        let Some(n) = self.keep_latest else {
            return admitted;
        };
        if admitted.len() <= n {
            return admitted;
        }
        let mut ranked: Vec<&String> = admitted.iter().collect();
        if admitted.iter().all(|t| version_of(t).is_some()) {
            ranked.sort_by_key(|t| std::cmp::Reverse(version_of(t)));
        } else {
            ranked.sort_by(|a, b| b.cmp(a));
        }
        let newest: std::collections::HashSet<&String> = ranked.into_iter().take(n).collect();
        admitted
            .iter()
            .filter(|t| newest.contains(t))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(
        semver: Option<&str>,
        allow: &[&str],
        deny: &[&str],
        keep: Option<usize>,
    ) -> TagFilter {
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        TagFilter::new(&TagFilters {
            semver: semver.map(str::to_owned),
            allow: own(allow),
            deny: own(deny),
            keep_latest: keep,
        })
        .unwrap()
    }

    #[test]
    fn filters_apply_in_order() {
        let tags: Vec<String> = [
            "1.9.0",
            "1.9.0-rc1",
            "1.10.0",
            "v2.0.0",
            "latest",
            "2.0.0-alpine",
            "v1.2.0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cases: [(TagFilter, &[&str]); 6] = [
            (
                filter(None, &[], &[], None),
                &[
                    "1.9.0",
                    "1.9.0-rc1",
                    "1.10.0",
                    "v2.0.0",
                    "latest",
                    "2.0.0-alpine",
                    "v1.2.0",
                ],
            ),
            (
                filter(Some(">=1.9.0"), &[], &[], None),
                &["1.9.0", "1.10.0", "v2.0.0"],
            ),
            (filter(None, &["^v"], &[], None), &["v2.0.0", "v1.2.0"]),
            (
                filter(None, &[], &["-rc", "alpine"], None),
                &["1.9.0", "1.10.0", "v2.0.0", "latest", "v1.2.0"],
            ),
            (
                filter(Some(">=1.0.0"), &[], &[], Some(2)),
                &["1.10.0", "v2.0.0"],
            ),
            (filter(None, &["^l", "^1"], &[], Some(1)), &["latest"]),
        ];
        for (i, (f, want)) in cases.iter().enumerate() {
            assert_eq!(f.apply(tags.clone()), *want, "case {i}");
        }
        assert!(filter(Some(">=1.2.0"), &["^v"], &["-rc"], None).admits("v1.3.0"));
        assert!(!filter(Some(">=1.2.0"), &["^v"], &["-rc"], None).admits("v1.1.0"));
    }
}
