//! Parses the sync request body `{"rsync_config":{"source":…,"target":…}}` from raw bytes.
//!
//! Done by hand instead of with axum's `Json` extractor, whose rejections are plain text
//! with 415/422 statuses: CI callers use `curl -d`, which sends
//! `application/x-www-form-urlencoded`, and the seed accepted that. Here the content type
//! is ignored, every problem is a 400 in the seed's JSON shape, and the message names the
//! field. Unknown keys are ignored (older and newer clients may send more); duplicate keys
//! are refused, so a proxy that reads the first value and this service that would read
//! the last can never disagree about what was asked.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::response::RsyncConfigEcho;

/// Largest accepted body; a valid request is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The example shown in error messages.
const EXAMPLE: &str = r#"{"rsync_config":{"source":"reg-a.example.com/team/app:v1","target":"reg-b.example.com/team/app:v1"}}"#;

/// A usable sync request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// Source reference or image-syncer rule.
    pub source: String,
    /// Target reference or image-syncer rule.
    pub target: String,
}

impl SyncRequest {
    /// The `rsync_config` echo for the response.
    pub fn echo(&self) -> RsyncConfigEcho {
        RsyncConfigEcho {
            source: self.source.clone(),
            target: self.target.clone(),
        }
    }
}

/// An unusable body: what is wrong, and whatever source/target could be read, for the echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// One sentence naming the field and what to send instead.
    pub message: String,
    /// Source and target as far as they were strings.
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
/// refuses duplicate keys, which `serde_json::Value` silently collapses.
#[derive(Deserialize)]
struct DuplicateCheck {
    #[serde(rename = "rsync_config")]
    _rsync_config: Option<DuplicateCheckInner>,
}

#[derive(Deserialize)]
struct DuplicateCheckInner {
    #[serde(rename = "source")]
    _source: Option<IgnoredAny>,
    #[serde(rename = "target")]
    _target: Option<IgnoredAny>,
}

/// Parses and checks a request body.
pub fn parse_sync_request(body: &[u8]) -> Result<SyncRequest, BodyError> {
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
    let source = string_field(config, "source");
    let target = string_field(config, "target");
    let echo = RsyncConfigEcho {
        source: source.as_ref().map(|s| s.to_string()).unwrap_or_default(),
        target: target.as_ref().map(|s| s.to_string()).unwrap_or_default(),
    };
    let with_echo = |message: String| BodyError {
        message,
        echo: echo.clone(),
    };
    let source = source.map_err(with_echo)?;
    let target = target.map_err(with_echo)?;
    if let Err(e) = serde_json::from_str::<DuplicateCheck>(text) {
        // The shape is already known to be right, so a duplicate key is the only error left.
        return Err(with_echo(format!("request body has a duplicate key: {e}")));
    }
    Ok(SyncRequest {
        source: source.to_owned(),
        target: target.to_owned(),
    })
}

/// `rsync_config.<name>` as a non-blank string, or a message naming it.
fn string_field<'a>(
    config: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a str, String> {
    match config.get(name) {
        None | Some(Value::Null) => Err(format!(
            "rsync_config.{name} is missing: give the image reference, e.g. reg.example.com/team/app:v1"
        )),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!(
            "rsync_config.{name} is empty: give the image reference, e.g. reg.example.com/team/app:v1"
        )),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "rsync_config.{name} must be a string, not {}",
            kind(other)
        )),
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

    #[test]
    fn body_table() {
        let ok = |s: &str, t: &str| {
            Ok::<_, String>(SyncRequest {
                source: s.into(),
                target: t.into(),
            })
        };
        // (name, body, expected: Ok(request) or Err(substring of the message))
        let cases: Vec<(&str, &[u8], Result<SyncRequest, String>)> = vec![
            (
                "good",
                br#"{"rsync_config":{"source":"a/b:1","target":"c/d:1"}}"#,
                ok("a/b:1", "c/d:1"),
            ),
            (
                "unknown keys ignored",
                br#"{"x":1,"rsync_config":{"source":"a","target":"b","foo":[1]}}"#,
                ok("a", "b"),
            ),
            (
                "whitespace around",
                b" \n{\"rsync_config\":{\"source\":\"a\",\"target\":\"b\"}}\n",
                ok("a", "b"),
            ),
            ("empty", b"", Err("empty".into())),
            ("blank", b"  \n", Err("empty".into())),
            ("not utf-8", b"{\"rsync_config\":\xff}", Err("UTF-8".into())),
            ("truncated", br#"{"rsync_config":"#, Err("not valid JSON".into())),
            ("form-encoded", b"source=a&target=b", Err("not valid JSON".into())),
            ("array", b"[]", Err("must be a JSON object".into())),
            ("string", br#""x""#, Err("must be a JSON object".into())),
            ("no rsync_config", br#"{"source":"a"}"#, Err("rsync_config is missing".into())),
            ("null rsync_config", br#"{"rsync_config":null}"#, Err("rsync_config is missing".into())),
            (
                "rsync_config string",
                br#"{"rsync_config":"a"}"#,
                Err("rsync_config must be an object".into()),
            ),
            (
                "no source",
                br#"{"rsync_config":{"target":"b"}}"#,
                Err("rsync_config.source is missing".into()),
            ),
            (
                "no target",
                br#"{"rsync_config":{"source":"a"}}"#,
                Err("rsync_config.target is missing".into()),
            ),
            (
                "numeric source",
                br#"{"rsync_config":{"source":123,"target":"b"}}"#,
                Err("rsync_config.source must be a string, not a number".into()),
            ),
            (
                "array target",
                br#"{"rsync_config":{"source":"a","target":[]}}"#,
                Err("rsync_config.target must be a string, not an array".into()),
            ),
            (
                "object source",
                br#"{"rsync_config":{"source":{},"target":"b"}}"#,
                Err("rsync_config.source must be a string, not an object".into()),
            ),
            (
                "blank source",
                br#"{"rsync_config":{"source":"  ","target":"b"}}"#,
                Err("rsync_config.source is empty".into()),
            ),
            (
                "duplicate source",
                br#"{"rsync_config":{"source":"a","source":"x","target":"b"}}"#,
                Err("duplicate field `source`".into()),
            ),
            (
                "duplicate rsync_config",
                br#"{"rsync_config":{"source":"a","target":"b"},"rsync_config":{"source":"a","target":"b"}}"#,
                Err("duplicate field `rsync_config`".into()),
            ),
        ];
        for (name, body, expected) in cases {
            match (parse_sync_request(body), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "case {name}"),
                (Err(got), Err(want)) => {
                    assert!(got.message.contains(&want), "case {name}: {}", got.message)
                }
                (got, want) => panic!("case {name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn error_echoes_what_was_readable() {
        let err =
            parse_sync_request(br#"{"rsync_config":{"source":"a:1","target":5}}"#).unwrap_err();
        assert_eq!(err.echo.source, "a:1");
        assert_eq!(err.echo.target, "");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let body = "[".repeat(10_000);
        assert!(parse_sync_request(body.as_bytes()).is_err());
    }
}
