//! Image references (`registry/repository[:tag][@digest]`), checked against the OCI
//! distribution-spec grammar before any network call.
//!
//! Stricter than oci-spec's parser on purpose: repository names must be lower case,
//! tags ASCII, digests lower-case hex, so nothing a registry would refuse gets that far.

use std::fmt;

pub use crate::config::names::{normalise_host, split_host_port, DOCKER_HUB};
use crate::registry::digest;

/// Longest reference accepted; checked before anything else so parsing stays cheap.
pub const MAX_REFERENCE_LEN: usize = 512;
/// Longest repository path, registry host not counted (distribution/reference since
/// v0.6 and distribution's own server check the path alone).
const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag (distribution spec).
const MAX_TAG_LEN: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host[:port]`, lower case; `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path inside the registry (`library/x` for Docker Hub's official images).
    pub repository: String,
    /// Tag, if the reference has one.
    pub tag: Option<String>,
    /// Digest, if the reference has one.
    pub digest: Option<String>,
}

/// Why a reference is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Empty string.
    #[error("the image reference is empty")]
    Empty,
    /// Longer than [`MAX_REFERENCE_LEN`].
    #[error("the image reference is {0} bytes long, more than the {MAX_REFERENCE_LEN} allowed")]
    TooLong(usize),
    /// Anything else, with the reason.
    #[error("image reference {reference:?} is invalid: {reason}")]
    Invalid {
        /// The reference as given (cut to a readable length).
        reference: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

impl ImageRef {
    /// Parses and checks `input`; an absent registry means Docker Hub.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() > MAX_REFERENCE_LEN {
            return Err(ReferenceError::TooLong(input.len()));
        }
        let invalid = |reason: &str| ReferenceError::Invalid {
            reference: input.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        if let Some(c) = input.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(invalid(&format!(
                "it contains {c:?}; references are printable ASCII without spaces"
            )));
        }
        if input.contains("://") {
            return Err(invalid(
                "write host/repository without a scheme such as https://",
            ));
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((n, d)) => {
                digest::validate(d).map_err(|e| invalid(&e.to_string()))?;
                (n, Some(d.to_owned()))
            }
            None => (input, None),
        };
        let (name, tag) = split_tag(name_and_tag);
        if let Some(tag) = tag {
            check_tag(tag).map_err(|r| invalid(&r))?;
        }
        let (registry, repository) = split_registry(name).map_err(|r| invalid(&r))?;
        check_repository(&repository).map_err(|r| invalid(&r))?;
        if repository.len() > MAX_REPOSITORY_LEN {
            return Err(invalid(&format!(
                "the repository name is longer than {MAX_REPOSITORY_LEN} characters"
            )));
        }
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn reference(&self) -> Option<&str> {
        self.digest.as_deref().or(self.tag.as_deref())
    }

    /// The same repository at another tag, without digest.
    pub fn with_tag(&self, tag: &str) -> Self {
        ImageRef {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits `name[:tag]`; a colon before the last slash belongs to a registry port.
fn split_tag(s: &str) -> (&str, Option<&str>) {
    let last_slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[last_slash..].find(':') {
        Some(i) => (&s[..last_slash + i], Some(&s[last_slash + i + 1..])),
        None => (s, None),
    }
}

/// Splits off the registry: the first component is one when it has a dot, a port or is
/// `localhost`, as docker decides.
fn split_registry(name: &str) -> Result<(String, String), String> {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first.eq_ignore_ascii_case("localhost") =>
        {
            check_host(first)?;
            let registry = normalise_host(first);
            let repository = if registry == DOCKER_HUB && !rest.contains('/') {
                format!("library/{rest}")
            } else {
                rest.to_owned()
            };
            Ok((registry, repository))
        }
        _ => {
            let repository = if name.contains('/') {
                name.to_owned()
            } else {
                format!("library/{name}")
            };
            Ok((DOCKER_HUB.to_owned(), repository))
        }
    }
}

fn check_host(host: &str) -> Result<(), String> {
    // `[IPv6]` or `[IPv6]:port`, as in docker's grammar; nothing else may follow `]`.
    if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err(format!(
                "registry host {host:?} opens '[' without closing it"
            ));
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "registry host [{ip}] is not an IPv6 address (only IPv6 goes in brackets)"
            ));
        }
        return match after {
            "" => Ok(()),
            _ => match after.strip_prefix(':') {
                Some(port) => check_port(port),
                None => Err(format!(
                    "registry host {host:?}: only :port may follow the IPv6 address"
                )),
            },
        };
    }
    let (name, port) = split_host_port(host);
    if let Some(port) = port {
        check_port(port)?;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!(
            "registry host {name:?} is not a host name, an IPv4 address or a [bracketed] IPv6 address"
        ));
    }
    Ok(())
}

fn check_port(port: &str) -> Result<(), String> {
    let valid = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "registry port {port:?} is not a number from 1 to 65535"
        ))
    }
}

/// Repository components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, joined by `/`.
fn check_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("the repository name is empty".into());
    }
    for component in repository.split('/') {
        if !valid_component(component) {
            return Err(format!(
                "repository component {component:?} must be lower-case letters and digits, \
                 separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        let sep = b[i];
        while i < b.len() && b[i] == sep {
            i += 1;
        }
        let run = i - start;
        let ok = match sep {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

pub(crate) fn check_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    if b.is_empty() {
        return Err("the tag after ':' is empty".into());
    }
    if b.len() > MAX_TAG_LEN {
        return Err(format!("the tag is longer than {MAX_TAG_LEN} characters"));
    }
    if !word(b[0]) || !b.iter().all(|&x| word(x) || x == b'.' || x == b'-') {
        return Err(format!(
            "tag {tag:?} must be letters, digits, '_', '.' or '-' and not start with '.' or '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_valid_references() {
        let d = format!("sha256:{HEX}");
        // Exactly the longest repository name allowed.
        let long = "a".repeat(255);
        type Parsed<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: Vec<(String, Parsed)> = vec![
            (
                "busybox".into(),
                ("docker.io", "library/busybox", None, None),
            ),
            (
                "busybox:1.36".into(),
                ("docker.io", "library/busybox", Some("1.36"), None),
            ),
            (
                "team/app:v1".into(),
                ("docker.io", "team/app", Some("v1"), None),
            ),
            (
                "index.docker.io/nginx:x".into(),
                ("docker.io", "library/nginx", Some("x"), None),
            ),
            (
                "127.0.0.1:5000/team/app:v1.0".into(),
                ("127.0.0.1:5000", "team/app", Some("v1.0"), None),
            ),
            (
                "LOCALHOST:5000/a".into(),
                ("localhost:5000", "a", None, None),
            ),
            (
                "reg.example.com/a__b/c-d--e/f.g:T_1".into(),
                ("reg.example.com", "a__b/c-d--e/f.g", Some("T_1"), None),
            ),
            (format!("h.io/a@{d}"), ("h.io", "a", None, Some(d.as_str()))),
            (
                "[2001:db8::1]:5000/team/app:v1".into(),
                ("[2001:db8::1]:5000", "team/app", Some("v1"), None),
            ),
            (
                "[2001:DB8:0::1]/team/app".into(),
                ("[2001:db8::1]", "team/app", None, None),
            ),
            (
                "[::1]:5000/x:t".into(),
                ("[::1]:5000", "x", Some("t"), None),
            ),
            (
                format!("h.io/{}:v1", "a".repeat(255)),
                ("h.io", long.as_str(), Some("v1"), None),
            ),
            (
                format!("h.io/a:t@{d}"),
                ("h.io", "a", Some("t"), Some(d.as_str())),
            ),
        ];
        for (input, (registry, repository, tag, digest)) in cases {
            let r = ImageRef::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (
                    r.registry.as_str(),
                    r.repository.as_str(),
                    r.tag.as_deref(),
                    r.digest.as_deref()
                ),
                (registry, repository, tag, digest),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_invalid_references() {
        let cases: Vec<String> = vec![
            "".into(),
            "a:t ".into(),
            "a:t\n".into(),
            "a\0b".into(),
            "Uppercase/lowercase:tag".into(),
            "host:5000/Upper:t".into(),
            "host/a/../b:t".into(),
            "host/a%2e%2e/b:t".into(),
            "host/a//b:t".into(),
            "https://h/x".into(),
            "user:pw@h/x".into(),
            "[::1:5000/x".into(),
            "[zz::1]:5000/x".into(),
            "[127.0.0.1]:5000/x".into(),
            "[::1]x/y".into(),
            "[::1]:99999/x".into(),
            "[::1]:/x".into(),
            "::1:5000/x".into(),
            format!("h.io/{}", "a".repeat(256)),
            "h:99999/x".into(),
            "h:/x".into(),
            "h.io/a:".into(),
            "h.io/a:täg".into(),
            "h.io/a:标签".into(),
            "h.io/ä".into(),
            "h.io/a:.t".into(),
            format!("h.io/a:{}", "t".repeat(129)),
            format!("h.io/{}", "a".repeat(300)),
            "x".repeat(MAX_REFERENCE_LEN + 1),
            "h.io/a@sha256:abc".into(),
            format!("h.io/a@sha256:{}", HEX.to_uppercase()),
            format!("h.io/a@md5:{}", &HEX[..32]),
            "h.io/a-:t".into(),
            "h.io/a...b:t".into(),
            "h.io/a___b:t".into(),
        ];
        for input in cases {
            assert!(ImageRef::parse(&input).is_err(), "accepted {input:?}");
        }
    }

    #[test]
    fn huge_input_is_refused_fast() {
        let input = "a-".repeat(500_000) + "!";
        let start = std::time::Instant::now();
        assert!(matches!(
            ImageRef::parse(&input),
            Err(ReferenceError::TooLong(_))
        ));
        // Linear work on 1 MB takes microseconds; backtracking would take far longer than
        // this bound, which leaves a loaded machine an order of magnitude of room.
        assert!(start.elapsed() < std::time::Duration::from_millis(500));
    }
}
