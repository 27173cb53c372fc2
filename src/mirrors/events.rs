//! Push announcements from registries, read into the one thing mirrors care about: "tag T
//! of repository R at registry H was pushed". Two formats: distribution's notification
//! envelope (docker-registry, GitLab's registry) and Harbor's `PUSH_ARTIFACT` webhook
//! (its Default format and its CloudEvents format). Pure parsing: no HTTP, no jobs.

use serde::Deserialize;
use serde_json::Value;

use crate::config::names::normalise_host;

/// Manifest media types a tagged push may carry; anything else (blobs are
/// `application/octet-stream` or a layer type) is not an image push.
const MANIFEST_TYPES: [&str; 7] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/json",
];

/// Most events one envelope may hold; distribution sends one per write, Harbor one per
/// artifact. More is not a registry talking.
pub const MAX_EVENTS: usize = 1000;

/// A tagged manifest push, as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The sender's id for the event (distribution's `id`; for Harbor, made from the
    /// payload), used to recognise a resend.
    pub id: String,
    /// The registry, `host[:port]`, normalised as references are.
    pub host: String,
    /// Repository path inside the registry.
    pub repository: String,
    /// The tag pushed.
    pub tag: String,
    /// The manifest's digest, when announced.
    pub digest: Option<String>,
    /// The pushing client's `User-Agent`, when announced.
    pub user_agent: Option<String>,
}

/// One event of an envelope: a push that may concern a mirror, or something ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// A tagged manifest push.
    Push(Push),
    /// Not a tagged manifest push (a pull, a delete, a blob, a digest-only push).
    Ignored {
        /// The event's id, when it has one.
        id: String,
        /// The action (`pull`, `delete`, `PULL_ARTIFACT`, ...).
        action: String,
        /// Why it is ignored.
        why: String,
    },
}

/// Why a body is not a usable envelope (the sender gets a 400 saying so).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("the body is not a {format}: {reason}")]
    Shape {
        /// Which format was expected.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// One event lacks what a push needs.
    #[error("event {index} ({id}) of the {format}: {reason}")]
    Event {
        /// Which format.
        format: &'static str,
        /// Position in the envelope, from 0.
        index: usize,
        /// Its id, or `-` without one.
        id: String,
        /// What is missing or wrong.
        reason: String,
    },
}

const DISTRIBUTION: &str = "distribution notification envelope ({\"events\": [...]})";
const HARBOR: &str = "Harbor webhook payload ({\"type\": ..., \"event_data\": {...}})";

#[derive(Deserialize)]
struct Envelope {
    events: Vec<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DistEvent {
    id: String,
    action: String,
    target: DistTarget,
    request: DistRequest,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct DistTarget {
    media_type: String,
    digest: String,
    repository: String,
    url: String,
    tag: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DistRequest {
    host: String,
    useragent: String,
}

fn shape(format: &'static str, reason: impl ToString) -> EnvelopeError {
    EnvelopeError::Shape {
        format,
        reason: reason.to_string(),
    }
}

/// Reads distribution's envelope (`application/vnd.docker.distribution.events.v1+json`,
/// `…v2+json` or plain JSON: the same `{"events": [...]}`).
pub fn parse_distribution(body: &[u8]) -> Result<Vec<Announced>, EnvelopeError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| shape(DISTRIBUTION, e))?;
    if envelope.events.len() > MAX_EVENTS {
        return Err(shape(
            DISTRIBUTION,
            format!(
                "{} events, more than the {MAX_EVENTS} one envelope may hold",
                envelope.events.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(envelope.events.len());
    for (index, raw) in envelope.events.into_iter().enumerate() {
        let bad = |id: &str, reason: String| EnvelopeError::Event {
            format: DISTRIBUTION,
            index,
            id: if id.is_empty() { "-".into() } else { id.into() },
            reason,
        };
        if !raw.is_object() {
            return Err(bad("", format!("an event is an object, not {raw}")));
        }
        let event: DistEvent = serde_json::from_value(raw).map_err(|e| bad("", e.to_string()))?;
        if event.id.is_empty() {
            return Err(bad("", "no `id`: every event has one".into()));
        }
        if event.action.is_empty() {
            return Err(bad(
                &event.id,
                "no `action` (push, pull, mount, delete)".into(),
            ));
        }
        let ignored = |why: &str| Announced::Ignored {
            id: event.id.clone(),
            action: event.action.clone(),
            why: why.to_owned(),
        };
        if event.action != "push" {
            out.push(ignored("not a push"));
            continue;
        }
        let t = &event.target;
        if t.tag.is_empty() {
            out.push(ignored(
                if t.media_type.is_empty() || MANIFEST_TYPES.contains(&t.media_type.as_str()) {
                    "a push by digest (no tag)"
                } else {
                    "a blob, not a manifest"
                },
            ));
            continue;
        }
        if !t.media_type.is_empty() && !MANIFEST_TYPES.contains(&t.media_type.as_str()) {
            out.push(ignored("not a manifest"));
            continue;
        }
        if t.repository.is_empty() {
            return Err(bad(&event.id, "a push without `target.repository`".into()));
        }
        let host = if !event.request.host.is_empty() {
            event.request.host.clone()
        } else {
            host_of_url(&t.url).ok_or_else(|| {
                bad(
                    &event.id,
                    "neither `request.host` nor a `target.url` with a host names the registry"
                        .into(),
                )
            })?
        };
        out.push(Announced::Push(Push {
            id: event.id.clone(),
            host: normalise_host(&host),
            repository: t.repository.clone(),
            tag: t.tag.clone(),
            digest: (!t.digest.is_empty()).then(|| t.digest.clone()),
            user_agent: (!event.request.useragent.is_empty())
                .then(|| event.request.useragent.clone()),
        }));
    }
    Ok(out)
}

/// `host[:port]` of an absolute `http(s)://` URL.
fn host_of_url(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Some(match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

#[derive(Deserialize)]
struct HarborPayload {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    occur_at: Option<i64>,
    event_data: HarborData,
}

#[derive(Deserialize)]
struct HarborCloudEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: HarborData,
}

#[derive(Deserialize)]
struct HarborData {
    resources: Vec<HarborResource>,
    #[serde(default)]
    repository: Option<HarborRepository>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HarborResource {
    digest: String,
    tag: String,
    resource_url: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HarborRepository {
    repo_full_name: String,
}

/// Reads Harbor's webhook: the Default format (`{"type": "PUSH_ARTIFACT", "occur_at",
/// "operator", "event_data": {"resources": [...], "repository": {...}}}`) or the
/// CloudEvents one (`{"specversion": "1.0", "id", "type": "harbor.artifact.pushed",
/// "data": {...}}`). Harbor sends no event id in the Default format, so a resend is
/// recognised by `occur_at`, resource URL, digest and tag.
pub fn parse_harbor(body: &[u8]) -> Result<Vec<Announced>, EnvelopeError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| shape(HARBOR, e))?;
    let (id_base, kind, data) = if value.get("specversion").is_some() {
        let event: HarborCloudEvent =
            serde_json::from_value(value).map_err(|e| shape(HARBOR, e))?;
        let kind = match event.kind.as_str() {
            "harbor.artifact.pushed" => "PUSH_ARTIFACT".to_owned(),
            other => other.to_owned(),
        };
        (event.id, kind, event.data)
    } else {
        let payload: HarborPayload = serde_json::from_value(value).map_err(|e| shape(HARBOR, e))?;
        let base = format!("harbor:{}", payload.occur_at.unwrap_or_default());
        (base, payload.kind, payload.event_data)
    };
    if kind.is_empty() {
        return Err(shape(HARBOR, "an empty `type`"));
    }
    if data.resources.len() > MAX_EVENTS {
        return Err(shape(
            HARBOR,
            format!(
                "{} resources, more than the {MAX_EVENTS} accepted",
                data.resources.len()
            ),
        ));
    }
    let full_name = data
        .repository
        .map(|r| r.repo_full_name)
        .unwrap_or_default();
    let mut out = Vec::new();
    for (index, resource) in data.resources.into_iter().enumerate() {
        let id = format!(
            "{id_base}:{}:{}:{}",
            resource.resource_url, resource.digest, resource.tag
        );
        if kind != "PUSH_ARTIFACT" {
            out.push(Announced::Ignored {
                id,
                action: kind.clone(),
                why: "not a push".into(),
            });
            continue;
        }
        let bad = |reason: &str| EnvelopeError::Event {
            format: HARBOR,
            index,
            id: id.clone(),
            reason: reason.to_owned(),
        };
        if resource.tag.is_empty() || resource.tag.starts_with("sha256:") {
            out.push(Announced::Ignored {
                id: id.clone(),
                action: kind.clone(),
                why: "a push by digest (no tag)".into(),
            });
            continue;
        }
        // resource_url is `host/project/repo:tag` (or `@digest`), without a scheme.
        let (host, path) = resource
            .resource_url
            .split_once('/')
            .filter(|(h, p)| !h.is_empty() && !p.is_empty())
            .ok_or_else(|| bad("`resource_url` is not host/project/repository:tag"))?;
        let repository = if !full_name.is_empty() {
            full_name.clone()
        } else {
            let end = path.find(['@', ':']).unwrap_or(path.len());
            path[..end].to_owned()
        };
        out.push(Announced::Push(Push {
            id: id.clone(),
            host: normalise_host(host),
            repository,
            tag: resource.tag,
            digest: (!resource.digest.is_empty()).then_some(resource.digest),
            user_agent: None,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_push_pull_blob_and_host_from_url() {
        let body = br#"{"events":[
          {"id":"a","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1","repository":"team/app","url":"http://r:5000/v2/team/app/manifests/sha256:1","tag":"v1"},"request":{"host":"R:5000","useragent":"skopeo/1.9"}},
          {"id":"b","action":"pull","target":{"repository":"team/app","tag":"v1"}},
          {"id":"c","action":"push","target":{"mediaType":"application/octet-stream","repository":"team/app","url":"http://r:5000/v2/team/app/blobs/sha256:2"}},
          {"id":"d","action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","repository":"x","url":"http://10.0.0.1:5000/v2/x/manifests/sha256:3","tag":"t"}}
        ]}"#;
        let got = parse_distribution(body).unwrap();
        assert_eq!(got.len(), 4);
        match &got[0] {
            Announced::Push(p) => {
                assert_eq!(
                    (p.host.as_str(), p.repository.as_str(), p.tag.as_str()),
                    ("r:5000", "team/app", "v1")
                );
                assert_eq!(p.user_agent.as_deref(), Some("skopeo/1.9"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&got[1], Announced::Ignored { action, .. } if action == "pull"));
        assert!(matches!(&got[2], Announced::Ignored { why, .. } if why.contains("blob")));
        assert!(matches!(&got[3], Announced::Push(p) if p.host == "10.0.0.1:5000"));
    }

    #[test]
    fn harbor_default_and_cloudevents() {
        let default = br#"{"type":"PUSH_ARTIFACT","occur_at":1680501893,"operator":"admin","event_data":{"resources":[{"digest":"sha256:9","tag":"v2","resource_url":"harbor.example.com/library/app:v2"}],"repository":{"date_created":1680501893,"name":"app","namespace":"library","repo_full_name":"library/app","repo_type":"private"}}}"#;
        let got = parse_harbor(default).unwrap();
        assert!(
            matches!(&got[0], Announced::Push(p) if p.host == "harbor.example.com" && p.repository == "library/app" && p.tag == "v2")
        );
        let cloud = br#"{"specversion":"1.0","id":"e1","type":"harbor.artifact.pushed","source":"/projects/1/webhook/policies/3","data":{"resources":[{"digest":"sha256:9","tag":"sha256:9","resource_url":"h/p/r@sha256:9"}],"repository":{"repo_full_name":"p/r"}}}"#;
        let got = parse_harbor(cloud).unwrap();
        assert!(matches!(&got[0], Announced::Ignored { why, .. } if why.contains("digest")));
    }
}
