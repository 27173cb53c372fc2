//! The `rsyncserver.mirrors` list: repositories kept in step with another. Plain data
//! plus the checks that name the bad key; the scheduler lives in `crate::mirrors`.

use std::time::Duration;

use serde::Deserialize;

use super::checks;

/// One entry of `rsyncserver.mirrors`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// `[a-z0-9-]+`, unique; jobs run as user `mirror:<name>`.
    pub name: String,
    /// Source rule (image-syncer syntax); no tag means every tag.
    pub source: String,
    /// One target rule or a list of them.
    pub target: OneOrMany,
    /// Run every this long (`10m`, `1h30m`, `2s`); excludes `cron`.
    #[serde(default)]
    pub every: Option<String>,
    /// Run on this cron schedule (5 fields, or 6 with seconds first); excludes `every`.
    #[serde(default)]
    pub cron: Option<String>,
    /// Run for pushes to the source announced at the events endpoints
    /// (`POST /v1/events/distribution`, `POST /v1/events/harbor`): one job per pushed tag.
    #[serde(default)]
    pub on_push: bool,
    /// Which of the source's tags to copy.
    #[serde(default)]
    pub tags: TagFilters,
    /// `os/arch[/variant]` patterns, as in a request.
    #[serde(default)]
    pub platforms: Vec<String>,
}

/// A single string or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl Default for OneOrMany {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl OneOrMany {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
}

/// Tag filters of a mirror, applied in this order: semver, allow, deny, keep_latest.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagFilters {
    /// A semver range (`>=1.2.0, <2`): only tags that parse as a version (a leading `v`
    /// allowed) and match it.
    #[serde(default)]
    pub semver: Option<String>,
    /// Regexes: a tag must match one of them (none given: every tag).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Regexes: a tag matching one of them is dropped.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Keep only the newest N (semver order when every tag left is a version, else by name).
    #[serde(default)]
    pub keep_latest: Option<usize>,
}

/// How often a mirror runs on its own.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A fixed interval after the last run's start.
    Every(Duration),
    /// A cron expression.
    Cron(Box<croner::Cron>),
}

impl MirrorConfig {
    /// The parsed schedule; `None` when the mirror runs only on pushes and by hand.
    /// Config loading has checked it, so an error here means a hand-built config.
    pub fn schedule(&self) -> Result<Option<Schedule>, String> {
        match (&self.every, &self.cron) {
            (Some(_), Some(_)) => Err("give `every` or `cron`, not both".into()),
            (Some(every), None) => parse_every(every).map(|d| Some(Schedule::Every(d))),
            (None, Some(cron)) => parse_cron(cron).map(|c| Some(Schedule::Cron(Box::new(c)))),
            (None, None) => Ok(None),
        }
    }
}

/// Shortest `every` accepted: shorter would hammer the source with tag listings.
const MIN_EVERY: Duration = Duration::from_secs(1);

fn parse_every(every: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(every.trim())
        .map_err(|e| format!("{every:?} is not a duration ({e}); write e.g. 30s, 10m, 1h30m"))?;
    if d < MIN_EVERY {
        return Err(format!("{every:?} is shorter than one second"));
    }
    Ok(d)
}

fn parse_cron(cron: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(cron.trim())
        .map_err(|e| {
            format!(
                "{cron:?} is not a cron expression ({e}); write 5 fields, e.g. \"*/10 * * * *\""
            )
        })
}

/// Checks every mirror; the error names the key (`rsyncserver.mirrors[2].tags.allow[0]`).
pub(crate) fn check_mirrors(mirrors: &[MirrorConfig]) -> Result<(), (String, String)> {
    let mut names = std::collections::BTreeSet::new();
    for (i, m) in mirrors.iter().enumerate() {
        let key = format!("rsyncserver.mirrors[{i}]");
        let err = |sub: &str, message: String| Err((format!("{key}.{sub}"), message));
        if m.name.is_empty()
            || !m
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return err("name", format!("{:?}: a mirror name is [a-z0-9-]+", m.name));
        }
        if !names.insert(m.name.as_str()) {
            return err("name", format!("{:?} is used by two mirrors", m.name));
        }
        if m.source.trim().is_empty() {
            return err("source", "empty: name the repository to mirror".into());
        }
        let targets = m.target.to_vec();
        if targets.is_empty() || targets.iter().any(|t| t.trim().is_empty()) {
            return err("target", "give a target rule or a list of them".into());
        }
        if let Some(every) = &m.every {
            if let Err(e) = parse_every(every) {
                return err("every", e);
            }
        }
        if let Some(cron) = &m.cron {
            if let Err(e) = parse_cron(cron) {
                return err("cron", e);
            }
        }
        if m.every.is_some() && m.cron.is_some() {
            return err("cron", "give `every` or `cron`, not both".into());
        }
        if let Some(range) = &m.tags.semver {
            if let Err(e) = semver::VersionReq::parse(range) {
                return err(
                    "tags.semver",
                    format!("{range:?} is not a semver range ({e}); write e.g. \">=1.2.0, <2\""),
                );
            }
        }
        for (side, list) in [("allow", &m.tags.allow), ("deny", &m.tags.deny)] {
            for (j, pattern) in list.iter().enumerate() {
                if let Err(e) = regex::Regex::new(pattern) {
                    return err(&format!("tags.{side}[{j}]"), format!("not a regex: {e}"));
                }
            }
        }
        if m.tags.keep_latest == Some(0) {
            return err(
                "tags.keep_latest",
                "0 would keep nothing: give at least 1 or leave it out".into(),
            );
        }
        if let Err(e) = checks::parse_platform_patterns(&m.platforms) {
            return err("platforms", e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn load(mirror: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "rsyncserver:\n  auth: {{admin: pw}}\n  mirrors:\n    - {{name: ok, source: r.example.com/a, target: r2.example.com/a, every: 10m}}\n    - {mirror}\n"
        );
        Config::from_yaml(&text, Path::new("test.yaml"))
    }

    #[test]
    fn a_bad_mirror_is_refused_naming_its_key() {
        let base = "source: r.example.com/a, target: r2.example.com/a";
        let cases = [
            (
                format!("{{name: Bad_Name, {base}}}"),
                "rsyncserver.mirrors[1].name",
            ),
            (
                format!("{{name: ok, {base}}}"),
                "rsyncserver.mirrors[1].name",
            ),
            (
                format!("{{name: b, {base}, every: soon}}"),
                "rsyncserver.mirrors[1].every",
            ),
            (
                format!("{{name: b, {base}, every: 0s}}"),
                "rsyncserver.mirrors[1].every",
            ),
            (
                format!("{{name: b, {base}, cron: \"61 * * * *\"}}"),
                "rsyncserver.mirrors[1].cron",
            ),
            (
                format!("{{name: b, {base}, every: 1m, cron: \"* * * * *\"}}"),
                "rsyncserver.mirrors[1].cron",
            ),
            (
                format!("{{name: b, {base}, tags: {{semver: \">>1\"}}}}"),
                "rsyncserver.mirrors[1].tags.semver",
            ),
            (
                format!("{{name: b, {base}, tags: {{allow: [\"^v\", \"(\"]}}}}"),
                "rsyncserver.mirrors[1].tags.allow[1]",
            ),
            (
                format!("{{name: b, {base}, tags: {{deny: [\"[\"]}}}}"),
                "rsyncserver.mirrors[1].tags.deny[0]",
            ),
            (
                format!("{{name: b, {base}, tags: {{keep_latest: 0}}}}"),
                "rsyncserver.mirrors[1].tags.keep_latest",
            ),
            (
                format!("{{name: b, {base}, platforms: [\"linux amd64\"]}}"),
                "rsyncserver.mirrors[1].platforms",
            ),
            (
                "{name: b, source: \"\", target: r2.example.com/a}".into(),
                "rsyncserver.mirrors[1].source",
            ),
            (
                "{name: b, source: r.example.com/a, target: []}".into(),
                "rsyncserver.mirrors[1].target",
            ),
        ];
        for (mirror, key) in cases {
            match load(&mirror) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{mirror}"),
                other => panic!("{mirror}: expected an error at {key}, got {other:?}"),
            }
        }
        let good = format!(
            "{{name: b-2, {base}, cron: \"*/10 * * * *\", on_push: true, tags: {{semver: \">=1.2.0\", allow: [\"^v\"], deny: [\"-rc\"], keep_latest: 20}}, platforms: [linux/amd64]}}"
        );
        let config = load(&good).expect("a good mirror loads");
        assert_eq!(config.rsyncserver.mirrors.len(), 2);
        assert!(config.rsyncserver.mirrors[1].schedule().unwrap().is_some());
    }
}
