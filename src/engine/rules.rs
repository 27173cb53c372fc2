//! The image-syncer rule syntax of `source` and `target`: which tags a side names.
//!
//! `repo:tag`, `repo` (every tag), `repo:v1,v2`, `repo:/regex/` and `repo@sha256:…`.
//! Parsing is pure; expanding "every tag" and regexes needs the source's tag list.

use regex::Regex;

use crate::registry::reference::{check_tag, ImageRef, ReferenceError, MAX_REFERENCE_LEN};

/// Largest compiled regex accepted; a rule is a few characters, never megabytes.
const MAX_REGEX_SIZE: usize = 1 << 20;

/// Which tags one side of a rule names.
#[derive(Debug, Clone)]
pub enum Selector {
    /// No tag given: every tag (source), or the source's tags (target).
    All,
    /// One or more explicit tags.
    Tags(Vec<String>),
    /// Every tag the regex matches (source only).
    Regex(Regex),
    /// One digest.
    Digest(String),
}

/// One side of a rule: a repository and a selector.
#[derive(Debug, Clone)]
pub struct RuleSide {
    /// Registry and repository; tag and digest are empty.
    pub image: ImageRef,
    /// What the side selects.
    pub selector: Selector,
}

impl RuleSide {
    /// Parses `registry/repository[:tags|:/regex/|@digest]`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.len() > MAX_REFERENCE_LEN {
            return Err(ReferenceError::TooLong(input.len()));
        }
        let invalid = |reason: String| ReferenceError::Invalid {
            reference: input.chars().take(80).collect(),
            reason,
        };
        if input.contains('@') {
            let mut image = ImageRef::parse(input)?;
            let digest = image.digest.clone().expect("parsed digest");
            image.tag = None;
            image.digest = None;
            return Ok(RuleSide {
                image,
                selector: Selector::Digest(digest),
            });
        }
        // A repository never holds ':', so the first ':' after the first '/' starts the
        // selector (a regex may itself hold '/' and ':').
        let name_start = input.find('/').map_or(0, |i| i + 1);
        let (name, selector) = match input[name_start..].find(':') {
            Some(i) => (&input[..name_start + i], Some(&input[name_start + i + 1..])),
            None => (input, None),
        };
        let image = ImageRef::parse(name)?;
        if image.tag.is_some() {
            return Err(invalid("a tag selector must follow the repository".into()));
        }
        let selector = match selector {
            None => Selector::All,
            Some(s) if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') => {
                let pattern = &s[1..s.len() - 1];
                let re = regex::RegexBuilder::new(pattern)
                    .size_limit(MAX_REGEX_SIZE)
                    .build()
                    .map_err(|e| {
                        invalid(format!(
                            "tag regex /{pattern}/ does not compile: {}",
                            one_line(&e)
                        ))
                    })?;
                Selector::Regex(re)
            }
            Some(s) => {
                let tags: Vec<String> = s.split(',').map(str::to_owned).collect();
                for tag in &tags {
                    check_tag(tag).map_err(&invalid)?;
                }
                Selector::Tags(tags)
            }
        };
        Ok(RuleSide { image, selector })
    }
}

/// The regex crate's syntax errors span three lines (pattern, caret, message); an error
/// sentence in a JSON answer and a log line wants only the message.
fn one_line(err: &regex::Error) -> String {
    let text = err.to_string();
    let last = text.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

/// Target tags given for a source that is not a tag list, or a different number of them.
const RENAME: &str = "target tags rename source tags one by one: give the source the same number of explicit tags, or drop the target's tags";

/// Why a rule cannot be turned into image pairs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Source and target tag lists do not line up.
    #[error("{0}")]
    Shape(String),
    /// The source selected no tag at all.
    #[error("no tag of {0} matches the source rule; nothing to copy")]
    NothingMatched(String),
}

/// Pairs each selected source tag (or the digest) with its target reference.
/// `source_tags` is the source's tag list, needed only for `All` and `Regex`.
pub fn pair(
    source: &RuleSide,
    target: &RuleSide,
    source_tags: Option<&[String]>,
) -> Result<Vec<(ImageRef, ImageRef)>, RuleError> {
    let shape = |m: &str| RuleError::Shape(m.to_owned());
    if let Selector::Digest(digest) = &source.selector {
        let src = ImageRef {
            digest: Some(digest.clone()),
            ..source.image.clone()
        };
        let dst = match &target.selector {
            Selector::All => ImageRef {
                digest: Some(digest.clone()),
                ..target.image.clone()
            },
            Selector::Digest(d) if d == digest => ImageRef {
                digest: Some(d.clone()),
                ..target.image.clone()
            },
            Selector::Digest(_) => {
                return Err(shape("the target digest must equal the source digest"))
            }
            Selector::Tags(t) if t.len() == 1 => target.image.with_tag(&t[0]),
            Selector::Tags(_) => {
                return Err(shape(
                    "one source digest can go to one target tag, not several",
                ))
            }
            Selector::Regex(_) => return Err(shape("a target cannot be a regex")),
        };
        return Ok(vec![(src, dst)]);
    }
    // The target's shape is checked before the source's tags are looked at, so a rule that
    // can never work is refused before any tag listing (the planner calls this first with
    // a stand-in tag list).
    let target_shape = match &target.selector {
        Selector::Regex(_) => Some("a target cannot be a regex"),
        Selector::Digest(_) => Some("a target digest needs a source digest"),
        Selector::Tags(_) if !matches!(source.selector, Selector::Tags(_)) => Some(RENAME),
        Selector::Tags(_) | Selector::All => None,
    };
    if let Some(message) = target_shape {
        return Err(shape(message));
    }
    let tags: Vec<String> = match &source.selector {
        Selector::Tags(t) => t.clone(),
        Selector::All => source_tags.unwrap_or_default().to_vec(),
        Selector::Regex(re) => source_tags
            .unwrap_or_default()
            .iter()
            .filter(|t| re.is_match(t))
            .cloned()
            .collect(),
        Selector::Digest(_) => unreachable!("handled above"),
    };
    if tags.is_empty() {
        return Err(RuleError::NothingMatched(source.image.name()));
    }
    let target_tags: Vec<String> = match &target.selector {
        Selector::Tags(t) if t.len() == tags.len() => t.clone(),
        Selector::Tags(_) => return Err(shape(RENAME)),
        // Regex and digest targets were refused above.
        _ => tags.clone(),
    };
    Ok(tags
        .iter()
        .zip(&target_tags)
        .map(|(s, t)| (source.image.with_tag(s), target.image.with_tag(t)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(src: &str, dst: &str, tags: &[&str]) -> Result<Vec<String>, RuleError> {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let s = RuleSide::parse(src).unwrap();
        let t = RuleSide::parse(dst).unwrap();
        Ok(pair(&s, &t, Some(&tags))?
            .into_iter()
            .map(|(a, b)| format!("{a} -> {b}"))
            .collect())
    }

    #[test]
    fn expands_each_rule_form() {
        let d = format!("sha256:{}", "b".repeat(64));
        let all = ["v1", "v2", "latest"];
        let cases: Vec<(String, String, Vec<String>)> = vec![
            (
                "h.io/a:v1".into(),
                "g.io/b".into(),
                vec!["h.io/a:v1 -> g.io/b:v1".into()],
            ),
            (
                "h.io/a:v1".into(),
                "g.io/b:prod".into(),
                vec!["h.io/a:v1 -> g.io/b:prod".into()],
            ),
            (
                "h.io/a".into(),
                "g.io/b".into(),
                vec![
                    "h.io/a:v1 -> g.io/b:v1".into(),
                    "h.io/a:v2 -> g.io/b:v2".into(),
                    "h.io/a:latest -> g.io/b:latest".into(),
                ],
            ),
            (
                "h.io/a:v1,v2".into(),
                "g.io/b:x,y".into(),
                vec![
                    "h.io/a:v1 -> g.io/b:x".into(),
                    "h.io/a:v2 -> g.io/b:y".into(),
                ],
            ),
            (
                "h.io:5000/a:/^v[0-9]+$/".into(),
                "g.io/b".into(),
                vec![
                    "h.io:5000/a:v1 -> g.io/b:v1".into(),
                    "h.io:5000/a:v2 -> g.io/b:v2".into(),
                ],
            ),
            (
                format!("h.io/a@{d}"),
                "g.io/b".into(),
                vec![format!("h.io/a@{d} -> g.io/b@{d}")],
            ),
            (
                format!("h.io/a@{d}"),
                "g.io/b:t".into(),
                vec![format!("h.io/a@{d} -> g.io/b:t")],
            ),
        ];
        for (src, dst, want) in cases {
            assert_eq!(pairs(&src, &dst, &all).unwrap(), want, "{src} -> {dst}");
        }
    }

    #[test]
    fn refuses_rules_that_do_not_line_up() {
        let all = ["v1", "v2"];
        for (src, dst) in [
            ("h.io/a:v1,v2", "g.io/b:x"),
            ("h.io/a", "g.io/b:x"),
            ("h.io/a:/v/", "g.io/b:/x/"),
            ("h.io/a:/^nomatch$/", "g.io/b"),
        ] {
            assert!(pairs(src, dst, &all).is_err(), "{src} -> {dst}");
        }
        assert!(matches!(
            pairs("h.io/a", "g.io/b", &[]),
            Err(RuleError::NothingMatched(_))
        ));
        // A target that can never work is a shape error whatever the source's tags, so
        // the planner refuses it before listing them.
        for (src, dst) in [
            ("h.io/a:/v.*/", "g.io/b:/x/"),
            ("h.io/a", "g.io/b:x"),
            (
                "h.io/a:/v/",
                "g.io/b@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ),
        ] {
            assert!(
                matches!(pairs(src, dst, &[]), Err(RuleError::Shape(_))),
                "{src} -> {dst}"
            );
        }
        let Err(e) = RuleSide::parse("h.io/a:/(a+/") else {
            panic!("an unclosed group compiles")
        };
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        assert!(e.to_string().contains("unclosed group"), "{e}");
        for bad in [
            "h.io/a:/(/",
            "h.io/a:v1,,v2",
            "h.io/a:v 1",
            "h.io/A:v1",
            "h.io/a:t ",
            " h.io/a:t",
            "a:t ",
        ] {
            assert!(RuleSide::parse(bad).is_err(), "{bad}");
        }
    }
}
