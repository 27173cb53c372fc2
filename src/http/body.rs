//! Parses the sync request body `{"rsync_config":{"source":…,"target":…}}` from raw bytes.
//!
//! Done by hand instead of with axum's `Json` extractor, whose rejections are plain text
//! with 415/422 statuses: CI callers use `curl -d`, which sends
//! `application/x-www-form-urlencoded`, and the seed accepted that. Here the content type
//! is ignored, every problem is a 400 in the seed's JSON shape, and the message names the
//! field. Unknown keys are ignored (older and newer clients may send more); duplicate keys
//! are refused, so a proxy that reads the first value and this service that would read
//! the last can never disagree about what was asked.
//!
//! Beyond the seed: `target` may be a list (one sync, several targets, as image-syncer
//! allowed), and `rsync_config.force` / `rsync_config.platforms` /
//! `rsync_config.referrers` are optional. Next to
//! `rsync_config`, `"async": true` asks for a job answered with 202 at once, and
//! `callback_url` for a webhook when the job ends.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use futures_util::StreamExt;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::response::{RsyncConfigEcho, TargetEcho};
use crate::engine::SyncRequest;

/// Largest accepted body; a valid request is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A body over [`MAX_BODY_BYTES`] is read and thrown away up to this many bytes before
/// the 413 goes out, so the client, still sending, reads the answer instead of a broken
/// pipe (reqwest, curl and Python requests all write the whole body before they read).
pub const MAX_DRAIN_BYTES: u64 = 64 << 20;

/// ... and for at most this long; past either bound the connection is closed unread.
pub const MAX_DRAIN_TIME: Duration = Duration::from_secs(10);

/// Why a request body could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Larger than [`MAX_BODY_BYTES`]; `drained` says whether the rest was read (then the
    /// client will read the 413) or left on the wire (beyond the drain bounds).
    TooLarge {
        /// The whole body was read and discarded.
        drained: bool,
    },
    /// The connection broke while the body was read.
    Broken,
}

/// Reads a request body of at most [`MAX_BODY_BYTES`]; see [`read_capped`].
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ReadError> {
    read_capped(headers, body, MAX_BODY_BYTES).await
}

/// Reads a request body of at most `cap` bytes. A larger one is read on and discarded
/// within [`MAX_DRAIN_BYTES`] and [`MAX_DRAIN_TIME`] (never buffered); one that announces
/// more than the drain bound is refused at once, unread.
pub async fn read_capped(headers: &HeaderMap, body: Body, cap: usize) -> Result<Bytes, ReadError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_DRAIN_BYTES) {
        return Err(ReadError::TooLarge { drained: false });
    }
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total = 0u64;
    let deadline = tokio::time::Instant::now() + MAX_DRAIN_TIME;
    loop {
        let next = if total > cap as u64 {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => return Err(ReadError::TooLarge { drained: false }),
            }
        } else {
            stream.next().await
        };
        match next {
            None if total > cap as u64 => return Err(ReadError::TooLarge { drained: true }),
            None => return Ok(Bytes::from(kept)),
            Some(Err(_)) if total > cap as u64 => {
                return Err(ReadError::TooLarge { drained: false })
            }
            Some(Err(_)) => return Err(ReadError::Broken),
            Some(Ok(chunk)) => {
                total += chunk.len() as u64;
                if total > MAX_DRAIN_BYTES {
                    return Err(ReadError::TooLarge { drained: false });
                }
                if total <= cap as u64 {
                    kept.extend_from_slice(&chunk);
                } else {
                    // Over the cap: from here on bytes are only counted.
                    kept = Vec::new();
                }
            }
        }
    }
}

/// The example shown in error messages.
const EXAMPLE: &str = r#"{"rsync_config":{"source":"reg-a.example.com/team/app:v1","target":"reg-b.example.com/team/app:v1"}}"#;

/// A usable body: what the engine gets, and what the response echoes.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    /// The engine's request.
    pub request: SyncRequest,
    /// `rsync_config` as the caller spelled it (a one-element list stays a list).
    pub echo: RsyncConfigEcho,
    /// `"async": true`: answer 202 with the job instead of waiting for the end.
    pub asynchronous: bool,
    /// Where to POST the job when it ends.
    pub callback_url: Option<String>,
}

/// An unusable body: what is wrong, and whatever source/target could be read, for the echo.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyError {
    /// One sentence naming the field and what to send instead.
    pub message: String,
    /// Source and target as far as they were readable.
    pub echo: RsyncConfigEcho,
}

impl BodyError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            echo: RsyncConfigEcho::default(),
        }
    }
}

/// Mirrors the expected shape with every value ignored; used only because serde's derive
/// refuses duplicate keys, which `serde_json::Value` silently collapses (last one wins).
#[derive(Deserialize)]
struct DuplicateCheck {
    #[serde(rename = "rsync_config")]
    _rsync_config: Option<DuplicateCheckInner>,
    #[serde(rename = "async")]
    _async: Option<IgnoredAny>,
    #[serde(rename = "callback_url")]
    _callback_url: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct DuplicateCheckInner {
    #[serde(rename = "source")]
    _source: Option<IgnoredAny>,
    #[serde(rename = "target")]
    _target: Option<IgnoredAny>,
    #[serde(rename = "force")]
    _force: Option<IgnoredAny>,
    #[serde(rename = "platforms")]
    _platforms: Option<IgnoredAny>,
    #[serde(rename = "referrers")]
    _referrers: Option<IgnoredAny>,
}

/// Parses and checks a request body.
pub fn parse_sync_request(body: &[u8]) -> Result<ParsedRequest, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::new(format!(
            "request body is empty: send {EXAMPLE}"
        )));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| BodyError::new("request body is not valid UTF-8: send JSON text"))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        BodyError::new(format!(
            "request body is not valid JSON ({e}): send {EXAMPLE}"
        ))
    })?;
    let Value::Object(top) = value else {
        return Err(BodyError::new(format!(
            "request body must be a JSON object: send {EXAMPLE}"
        )));
    };
    let config = match top.get("rsync_config") {
        None | Some(Value::Null) => {
            return Err(BodyError::new(format!(
                "rsync_config is missing: send {EXAMPLE}"
            )))
        }
        Some(Value::Object(config)) => config,
        Some(other) => {
            return Err(BodyError::new(format!(
                "rsync_config must be an object with source and target, not {}",
                kind(other)
            )))
        }
    };
    let source = source_field(config);
    let target = target_field(config);
    let echo = RsyncConfigEcho {
        source: source.clone().unwrap_or_default(),
        target: target.clone().unwrap_or_default(),
        ..RsyncConfigEcho::default()
    };
    let fail = |message: String| BodyError {
        message,
        echo: echo.clone(),
    };
    let source = source.map_err(fail)?;
    let target = target.map_err(fail)?;
    let force = force_field(config).map_err(fail)?;
    let platforms = platforms_field(config).map_err(fail)?;
    let referrers = referrers_field(config).map_err(fail)?;
    let asynchronous = async_field(&top).map_err(fail)?;
    let callback_url = callback_field(&top).map_err(fail)?;
    if let Err(e) = serde_json::from_str::<DuplicateCheck>(text) {
        // The shape is already known to be right, so a duplicate key is the only error left.
        return Err(fail(format!("request body has a duplicate key: {e}")));
    }
    let targets = match &target {
        TargetEcho::One(t) => vec![t.clone()],
        TargetEcho::Many(ts) => ts.clone(),
    };
    Ok(ParsedRequest {
        request: SyncRequest {
            source: source.clone(),
            targets,
            force,
            platforms: platforms.clone(),
            referrers,
        },
        echo: RsyncConfigEcho {
            source,
            target,
            force,
            platforms,
            referrers,
        },
        asynchronous,
        callback_url,
    })
}

/// `async` (next to `rsync_config`): optional boolean.
fn async_field(top: &Map<String, Value>) -> Result<bool, String> {
    match top.get("async") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("async must be true or false, not {}", kind(other))),
    }
}

/// `callback_url` (next to `rsync_config`): optional http(s) URL without credentials.
fn callback_field(top: &Map<String, Value>) -> Result<Option<String>, String> {
    match top.get("callback_url") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(url)) => {
            crate::jobs::webhook::check_callback_url(url).map(|_| Some(url.clone()))
        }
        Some(other) => Err(format!(
            "callback_url must be a string, not {}",
            kind(other)
        )),
    }
}

const REFERENCE_HINT: &str = "give an image reference, e.g. reg.example.com/team/app:v1";

/// `rsync_config.source`: a non-blank string.
fn source_field(config: &Map<String, Value>) -> Result<String, String> {
    match config.get("source") {
        None | Some(Value::Null) => {
            Err(format!("rsync_config.source is missing: {REFERENCE_HINT}"))
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(format!("rsync_config.source is empty: {REFERENCE_HINT}"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "rsync_config.source must be a string, not {}",
            kind(other)
        )),
    }
}

/// `rsync_config.target`: a non-blank string, or a non-empty list of them (several targets).
fn target_field(config: &Map<String, Value>) -> Result<TargetEcho, String> {
    match config.get("target") {
        None | Some(Value::Null) => {
            Err(format!("rsync_config.target is missing: {REFERENCE_HINT}"))
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(format!("rsync_config.target is empty: {REFERENCE_HINT}"))
        }
        Some(Value::String(s)) => Ok(TargetEcho::One(s.clone())),
        Some(Value::Array(items)) if items.is_empty() => Err(format!(
            "rsync_config.target is an empty list: {REFERENCE_HINT}"
        )),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                Value::String(_) => Err(format!(
                    "rsync_config.target[{i}] is empty: {REFERENCE_HINT}"
                )),
                other => Err(format!(
                    "rsync_config.target[{i}] must be a string, not {}",
                    kind(other)
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TargetEcho::Many),
        Some(other) => Err(format!(
            "rsync_config.target must be a string or a list of strings, not {}",
            kind(other)
        )),
    }
}

/// `rsync_config.force`: optional boolean, push even when the target has the digest.
fn force_field(config: &Map<String, Value>) -> Result<bool, String> {
    match config.get("force") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "rsync_config.force must be true or false, not {}",
            kind(other)
        )),
    }
}

/// `rsync_config.referrers`: optional boolean, copy signatures, attestations and SBOMs
/// with each image; absent means the config's `task.referrers`.
fn referrers_field(config: &Map<String, Value>) -> Result<Option<bool>, String> {
    match config.get("referrers") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "rsync_config.referrers must be true or false, not {}",
            kind(other)
        )),
    }
}

/// `rsync_config.platforms`: optional list of `os/arch[/variant]` strings.
fn platforms_field(config: &Map<String, Value>) -> Result<Vec<String>, String> {
    let hint = "rsync_config.platforms must be a list of strings like \"linux/amd64\"";
    match config.get("platforms") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("{hint}, not a list holding {}", kind(other))),
            })
            .collect(),
        Some(other) => Err(format!("{hint}, not {}", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected (source, targets), or a substring of the error message.
    type Expected = Result<(String, Vec<String>), &'static str>;

    fn one(source: &str, target: &str) -> (String, Vec<String>) {
        (source.into(), vec![target.into()])
    }

    #[test]
    fn body_table() {
        let cases: Vec<(&str, &[u8], Expected)> = vec![
            ("good", br#"{"rsync_config":{"source":"a/b:1","target":"c/d:1"}}"#, Ok(one("a/b:1", "c/d:1"))),
            (
                "unknown keys ignored",
                br#"{"x":1,"rsync_config":{"source":"a","target":"b","foo":[1]}}"#,
                Ok(one("a", "b")),
            ),
            (
                "whitespace around",
                b" \n{\"rsync_config\":{\"source\":\"a\",\"target\":\"b\"}}\n",
                Ok(one("a", "b")),
            ),
            (
                "target list",
                br#"{"rsync_config":{"source":"a","target":["b","c"]}}"#,
                Ok(("a".into(), vec!["b".into(), "c".into()])),
            ),
            ("empty", b"", Err("empty")),
            ("blank", b"  \n", Err("empty")),
            ("not utf-8", b"{\"rsync_config\":\xff}", Err("UTF-8")),
            ("truncated", br#"{"rsync_config":"#, Err("not valid JSON")),
            ("form-encoded", b"source=a&target=b", Err("not valid JSON")),
            ("array", b"[]", Err("must be a JSON object")),
            ("string", br#""x""#, Err("must be a JSON object")),
            ("no rsync_config", br#"{"source":"a"}"#, Err("rsync_config is missing")),
            ("null rsync_config", br#"{"rsync_config":null}"#, Err("rsync_config is missing")),
            ("rsync_config string", br#"{"rsync_config":"a"}"#, Err("rsync_config must be an object")),
            ("no source", br#"{"rsync_config":{"target":"b"}}"#, Err("rsync_config.source is missing")),
            ("no target", br#"{"rsync_config":{"source":"a"}}"#, Err("rsync_config.target is missing")),
            (
                "numeric source",
                br#"{"rsync_config":{"source":123,"target":"b"}}"#,
                Err("rsync_config.source must be a string, not a number"),
            ),
            (
                "array source",
                br#"{"rsync_config":{"source":["a"],"target":"b"}}"#,
                Err("rsync_config.source must be a string, not an array"),
            ),
            (
                "object target",
                br#"{"rsync_config":{"source":"a","target":{}}}"#,
                Err("rsync_config.target must be a string or a list of strings, not an object"),
            ),
            (
                "empty target list",
                br#"{"rsync_config":{"source":"a","target":[]}}"#,
                Err("rsync_config.target is an empty list"),
            ),
            (
                "bad target list item",
                br#"{"rsync_config":{"source":"a","target":["b",1]}}"#,
                Err("rsync_config.target[1] must be a string, not a number"),
            ),
            (
                "blank source",
                br#"{"rsync_config":{"source":"  ","target":"b"}}"#,
                Err("rsync_config.source is empty"),
            ),
            (
                "force not bool",
                br#"{"rsync_config":{"source":"a","target":"b","force":"yes"}}"#,
                Err("rsync_config.force must be true or false, not a string"),
            ),
            (
                "referrers not bool",
                br#"{"rsync_config":{"source":"a","target":"b","referrers":"no"}}"#,
                Err("rsync_config.referrers must be true or false, not a string"),
            ),
            (
                "platforms not list",
                br#"{"rsync_config":{"source":"a","target":"b","platforms":"linux/amd64"}}"#,
                Err("rsync_config.platforms must be a list"),
            ),
            (
                "duplicate source",
                br#"{"rsync_config":{"source":"a","source":"x","target":"b"}}"#,
                Err("duplicate field `source`"),
            ),
            (
                "duplicate rsync_config",
                br#"{"rsync_config":{"source":"a","target":"b"},"rsync_config":{"source":"a","target":"b"}}"#,
                Err("duplicate field `rsync_config`"),
            ),
        ];
        for (name, body, expected) in cases {
            match (parse_sync_request(body), expected) {
                (Ok(got), Ok((source, targets))) => {
                    assert_eq!(got.request.source, source, "case {name}");
                    assert_eq!(got.request.targets, targets, "case {name}");
                }
                (Err(got), Err(want)) => {
                    assert!(got.message.contains(want), "case {name}: {}", got.message)
                }
                (got, want) => panic!("case {name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn options_reach_the_engine_and_the_echo() {
        let parsed = parse_sync_request(
            br#"{"rsync_config":{"source":"a","target":["b"],"force":true,"platforms":["linux/arm64"],"referrers":false}}"#,
        )
        .unwrap();
        assert!(parsed.request.force);
        assert_eq!(parsed.request.platforms, ["linux/arm64"]);
        assert_eq!(parsed.request.referrers, Some(false));
        let echo = serde_json::to_value(&parsed.echo).unwrap();
        assert_eq!(
            echo,
            serde_json::json!({"source":"a","target":["b"],"force":true,"platforms":["linux/arm64"],"referrers":false})
        );
        let plain = parse_sync_request(br#"{"rsync_config":{"source":"a","target":"b"}}"#).unwrap();
        assert_eq!(plain.request.referrers, None, "absent: the config decides");
        assert_eq!(
            serde_json::to_value(&plain.echo).unwrap(),
            serde_json::json!({"source":"a","target":"b"}),
            "the seed's echo has exactly source and target"
        );
    }

    #[test]
    fn error_echoes_what_was_readable() {
        let err =
            parse_sync_request(br#"{"rsync_config":{"source":"a:1","target":5}}"#).unwrap_err();
        assert_eq!(err.echo.source, "a:1");
        assert_eq!(err.echo.target, TargetEcho::default());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let body = "[".repeat(10_000);
        assert!(parse_sync_request(body.as_bytes()).is_err());
    }
}
