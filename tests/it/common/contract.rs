//! Checks of the HTTP contract's JSON shapes (design §2) and of the logrus log lines.

use serde_json::Value;

/// Fields of `rsync_data` the seed defines; every rsync response carries them.
pub const SEED_DATA_FIELDS: [&str; 6] = [
    "rsync_status",
    "rsync_error",
    "rsync_info",
    "start_time",
    "end_time",
    "duration_time_seconds",
];

/// Fields of each `rsync_data.images[]` entry.
pub const IMAGE_FIELDS: [&str; 10] = [
    "source",
    "target",
    "digest",
    "status",
    "blobs_copied",
    "blobs_mounted",
    "blobs_skipped",
    "bytes_copied",
    "manifests_pushed",
    "error",
];

/// Asserts the seed shape: `rsync_data` with every seed field of the right type,
/// `rsync_config` and `username` present.
pub fn assert_seed_shape(body: &Value) {
    let data = body
        .get("rsync_data")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no rsync_data object in {body}"));
    for field in SEED_DATA_FIELDS {
        assert!(
            data.contains_key(field),
            "rsync_data.{field} missing in {body}"
        );
    }
    let status = data["rsync_status"].as_str().unwrap_or_default();
    assert!(
        ["successfully", "failed", "unusual"].contains(&status),
        "rsync_status {status:?} in {body}"
    );
    assert!(
        data["rsync_error"].is_null() || data["rsync_error"].is_string(),
        "rsync_error must be null or a string in {body}"
    );
    assert!(
        data["rsync_info"].is_string(),
        "rsync_info must be a string in {body}"
    );
    for field in ["start_time", "end_time"] {
        let text = data[field].as_str().unwrap_or_default();
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("rsync_data.{field} {text:?} is not RFC 3339 ({e})"));
    }
    let duration = data["duration_time_seconds"].as_f64();
    assert!(
        duration.is_some_and(|d| d >= 0.0),
        "duration_time_seconds in {body}"
    );
    assert!(
        body.get("rsync_config").is_some(),
        "rsync_config missing in {body}"
    );
    assert!(body.get("username").is_some(), "username missing in {body}");
}

/// Asserts the seed shape plus the per-image results of a sync that ran.
pub fn assert_sync_shape(body: &Value) {
    assert_seed_shape(body);
    let images = body["rsync_data"]["images"]
        .as_array()
        .unwrap_or_else(|| panic!("rsync_data.images must be an array in {body}"));
    for image in images {
        for field in IMAGE_FIELDS {
            assert!(
                image.get(field).is_some(),
                "images[].{field} missing in {body}"
            );
        }
    }
}

/// `rsync_data.rsync_status`.
pub fn status_of(body: &Value) -> &str {
    body["rsync_data"]["rsync_status"]
        .as_str()
        .unwrap_or_default()
}

/// `rsync_data.rsync_error` (`None` when null).
pub fn error_of(body: &Value) -> Option<&str> {
    body["rsync_data"]["rsync_error"].as_str()
}

/// `rsync_data.rsync_info`.
pub fn info_of(body: &Value) -> &str {
    body["rsync_data"]["rsync_info"]
        .as_str()
        .unwrap_or_default()
}

/// `rsync_data.images[i]`, panicking with the body when absent.
pub fn image_of(body: &Value, i: usize) -> &Value {
    body["rsync_data"]["images"]
        .get(i)
        .unwrap_or_else(|| panic!("no rsync_data.images[{i}] in {body}"))
}

/// A numeric field of an image result.
pub fn count(image: &Value, field: &str) -> u64 {
    image[field]
        .as_u64()
        .unwrap_or_else(|| panic!("images[].{field} is not a count in {image}"))
}

/// One parsed logrus text line: `time="YYYY-MM-DD HH:MM:SS" level=LEVEL msg="..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `YYYY-MM-DD HH:MM:SS`.
    pub time: String,
    /// `info`, `warning`, `error`, ...
    pub level: String,
    /// The message, unquoted (escapes left as written).
    pub msg: String,
}

/// Parses one logrus line; `None` if it is not in that format.
pub fn parse_logrus(line: &str) -> Option<LogLine> {
    let rest = line.strip_prefix("time=\"")?;
    let (time, rest) = rest.split_once('"')?;
    chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S").ok()?;
    let rest = rest.strip_prefix(" level=")?;
    let (level, rest) = rest.split_once(' ')?;
    if ![
        "trace", "debug", "info", "warning", "error", "fatal", "panic",
    ]
    .contains(&level)
    {
        return None;
    }
    let rest = rest.strip_prefix("msg=")?;
    let msg = match rest.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?.to_string(),
        None => rest.to_string(),
    };
    Some(LogLine {
        time: time.to_string(),
        level: level.to_string(),
        msg,
    })
}

/// Asserts every line of `info` is a logrus line and returns them parsed.
pub fn assert_logrus(info: &str) -> Vec<LogLine> {
    assert!(
        info.ends_with('\n'),
        "rsync_info must end with a newline: {info:?}"
    );
    info.lines()
        .map(|l| parse_logrus(l).unwrap_or_else(|| panic!("not a logrus line: {l:?}\nin:\n{info}")))
        .collect()
}

/// Asserts the last line is `Finished, N sync tasks failed, M tasks generate failed`
/// and returns `(N, M)`.
pub fn assert_finished(info: &str) -> (u64, u64) {
    let lines = assert_logrus(info);
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("rsync_info is empty"));
    let parsed = (|| {
        let rest = last.msg.strip_prefix("Finished, ")?;
        let (n, rest) = rest.split_once(" sync tasks failed, ")?;
        let m = rest.strip_suffix(" tasks generate failed")?;
        Some((n.parse().ok()?, m.parse().ok()?))
    })();
    parsed.unwrap_or_else(|| panic!("last rsync_info line is not the Finished line: {last:?}"))
}

/// The body without values that change between two identical requests (times).
pub fn without_times(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(data) = body.get_mut("rsync_data").and_then(Value::as_object_mut) {
        for field in [
            "start_time",
            "end_time",
            "duration_time_seconds",
            "rsync_info",
        ] {
            data.remove(field);
        }
    }
    body
}

/// Asserts none of `secrets` occurs in `text` (as given, or base64-encoded as
/// `user:pass` would be in a Basic header).
pub fn assert_no_secrets(what: &str, text: &str, secrets: &[&str]) {
    use base64::Engine as _;
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} contains the secret {secret:?}:\n{text}"
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
        let trimmed = encoded.trim_end_matches('=');
        assert!(
            trimmed.len() < 6 || !text.contains(trimmed),
            "{what} contains the base64 of the secret {secret:?}"
        );
    }
}

/// Asserts none of `secrets` (passwords, helper answers, identity tokens, issued bearer
/// tokens) occurs in any of `places`: `(what, text)` pairs such as sync answers, the
/// service's log, job records, metrics and the analysis log.
pub fn assert_no_secrets_anywhere(places: &[(&str, String)], secrets: &[String]) {
    let secrets: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    for (what, text) in places {
        assert_no_secrets(what, text, &secrets);
    }
}
