//! Manifest media types and the few manifest fields a copy needs.
//!
//! Manifests are never re-serialised: the engine pushes the bytes it fetched, so these
//! types read only what decides the walk (children, blobs) and ignore everything else.

use serde::Deserialize;

/// OCI image manifest (image-spec).
pub const OCI_IMAGE_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (image-spec).
pub const OCI_IMAGE_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const IMAGE_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list, schema 2.
pub const IMAGE_MANIFEST_LIST_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Docker schema 1 media types: recognised only to refuse them clearly.
const SCHEMA1_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
/// OCI artifact manifest (image-spec 1.1 release candidates), still found in registries.
const OCI_ARTIFACT_MEDIA_TYPE: &str = "application/vnd.oci.artifact.manifest.v1+json";

/// `Accept` header for manifest requests: every kind the engine copies, plus schema 1 so a
/// schema 1 image is recognised instead of failing as "not found".
pub const MANIFEST_ACCEPT: &str = concat!(
    "application/vnd.oci.image.index.v1+json, ",
    "application/vnd.docker.distribution.manifest.list.v2+json, ",
    "application/vnd.oci.image.manifest.v1+json, ",
    "application/vnd.docker.distribution.manifest.v2+json, ",
    "application/vnd.oci.artifact.manifest.v1+json, ",
    "application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, ",
    "application/vnd.docker.distribution.manifest.v1+json;q=0.5"
);

/// A content descriptor inside a manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// External locations (foreign layers); such blobs are never fetched.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Platform of an index entry.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// Platform of an index entry.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a manifest is, for the copy walk.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// An index / manifest list: its entries are manifests.
    Index(Vec<Descriptor>),
    /// An image or artifact manifest: its config and layers are blobs.
    Image(Vec<Descriptor>),
}

/// Why a manifest cannot be copied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManifestError {
    /// Docker schema 1, long deprecated and refused by current registries.
    #[error("it is a Docker schema 1 manifest, which is not supported: rebuild or re-push the image with a current docker/buildah to get schema 2 or OCI")]
    Schema1,
    /// Not JSON or lacking the fields of its kind.
    #[error("it is not a valid manifest ({0})")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<u64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    blobs: Option<Vec<Descriptor>>,
}

/// The media type of a manifest: the served `Content-Type` when it is specific, else the
/// one the manifest declares, else guessed from its shape.
pub fn manifest_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
    let served = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain");
    if let Some(served) = served {
        return served;
    }
    let raw: Option<RawManifest> = serde_json::from_slice(bytes).ok();
    match raw {
        Some(RawManifest {
            media_type: Some(m),
            ..
        }) => m,
        Some(RawManifest {
            manifests: Some(_), ..
        }) => OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned(),
        Some(RawManifest {
            schema_version: Some(1),
            ..
        }) => SCHEMA1_MEDIA_TYPES[1].to_owned(),
        _ => OCI_IMAGE_MEDIA_TYPE.to_owned(),
    }
}

/// Reads the walk-relevant part of a manifest of `media_type`.
pub fn parse_manifest(media_type: &str, bytes: &[u8]) -> Result<ManifestKind, ManifestError> {
    if SCHEMA1_MEDIA_TYPES.contains(&media_type) {
        return Err(ManifestError::Schema1);
    }
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    if raw.schema_version == Some(1) {
        return Err(ManifestError::Schema1);
    }
    let is_index = media_type == OCI_IMAGE_INDEX_MEDIA_TYPE
        || media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE
        || (raw.manifests.is_some() && raw.layers.is_none());
    if is_index {
        return raw
            .manifests
            .map(ManifestKind::Index)
            .ok_or_else(|| ManifestError::Invalid("index without \"manifests\"".into()));
    }
    let mut blobs = Vec::new();
    blobs.extend(raw.config);
    blobs.extend(raw.layers.unwrap_or_default());
    blobs.extend(raw.blobs.unwrap_or_default());
    let known_image = media_type == OCI_IMAGE_MEDIA_TYPE || media_type == IMAGE_MANIFEST_MEDIA_TYPE;
    if blobs.is_empty() && known_image {
        return Err(ManifestError::Invalid(
            "image manifest without config".into(),
        ));
    }
    if blobs.is_empty() && media_type != OCI_ARTIFACT_MEDIA_TYPE {
        return Err(ManifestError::Invalid(format!(
            "unknown manifest media type {media_type:?}"
        )));
    }
    Ok(ManifestKind::Image(blobs))
}

/// `Accept` for a referrers list: the referrers API and the fallback tag both answer
/// with an OCI image index, and anything else means "no referrers" (the spec's rule).
pub const OCI_INDEX_ACCEPT: &str = OCI_IMAGE_INDEX_MEDIA_TYPE;

/// Config media types of ordinary images: they say nothing about what an artifact is.
const IMAGE_CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// The referrers tag schema's tag for `digest` (`sha256:ab…` → `sha256-ab…`), as the
/// distribution spec writes it: algorithm cut to 32 characters, encoded part to 64, and
/// characters a tag may not hold turned into `-`.
pub fn fallback_tag(digest: &str) -> String {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .take(max)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!("{}-{}", clean(alg, 32), clean(hex, 64))
}

/// cosign's attachment tags of `digest`: signature, attestation, SBOM (`sha256-<hex>.sig`…).
pub fn cosign_tags(digest: &str) -> [String; 3] {
    let base = fallback_tag(digest);
    ["sig", "att", "sbom"].map(|suffix| format!("{base}.{suffix}"))
}

/// Whether `tag` names a referrer of some digest rather than an image: a fallback tag
/// `sha256-<64 hex>` or a cosign attachment `sha256-<64 hex>.sig|.att|.sbom`. Such tags
/// travel with their subject instead of being copied as images of their own.
pub fn is_referrer_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let (hex, suffix) = match rest.split_once('.') {
        Some((hex, suffix)) => (hex, Some(suffix)),
        None => (rest, None),
    };
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && suffix.is_none_or(|s| matches!(s, "sig" | "att" | "sbom"))
}

/// What a referrer manifest says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferrerInfo {
    /// Digest of the manifest it refers to (`subject.digest`), if it has one.
    pub subject: Option<String>,
    /// `artifactType`, else a config media type that is not an ordinary image config,
    /// else the first layer's media type, else the manifest's own media type: the most
    /// telling name for a log line.
    pub kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReferrer {
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Reads a referrer manifest's subject and kind; unreadable bytes give no subject.
pub fn referrer_info(media_type: &str, bytes: &[u8]) -> ReferrerInfo {
    let raw: Option<RawReferrer> = serde_json::from_slice(bytes).ok();
    let Some(raw) = raw else {
        return ReferrerInfo {
            subject: None,
            kind: media_type.to_owned(),
        };
    };
    let config_type = raw
        .config
        .map(|c| c.media_type)
        .filter(|t| !t.is_empty() && !IMAGE_CONFIG_TYPES.contains(&t.as_str()));
    let layer_type = raw
        .layers
        .and_then(|l| l.into_iter().next())
        .map(|l| l.media_type)
        .filter(|t| !t.is_empty());
    ReferrerInfo {
        subject: raw.subject.map(|s| s.digest),
        kind: raw
            .artifact_type
            .filter(|t| !t.is_empty())
            .or(config_type)
            .or(layer_type)
            .unwrap_or_else(|| media_type.to_owned()),
    }
}

/// The descriptor a referrers list holds for a manifest, as the spec builds it:
/// media type, digest, size, `artifactType` (the manifest's, else its config's media
/// type; none for an index without one) and every annotation of the manifest.
pub fn referrer_descriptor(media_type: &str, digest: &str, bytes: &[u8]) -> serde_json::Value {
    let raw: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let mut descriptor = serde_json::json!({
        "mediaType": media_type,
        "digest": digest,
        "size": bytes.len(),
    });
    let artifact_type = raw
        .get("artifactType")
        .or_else(|| raw.get("config").and_then(|c| c.get("mediaType")))
        .filter(|t| t.is_string());
    if let Some(t) = artifact_type {
        descriptor["artifactType"] = t.clone();
    }
    if let Some(a) = raw.get("annotations").filter(|a| a.is_object()) {
        descriptor["annotations"] = a.clone();
    }
    descriptor
}

/// The entries of a referrers index, each kept whole (artifact type, annotations and
/// whatever else a registry or client wrote), or `None` when the bytes are not an index.
pub fn index_entries(bytes: &[u8]) -> Option<Vec<serde_json::Value>> {
    let raw: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let entries = raw.get("manifests")?.as_array()?;
    entries
        .iter()
        .all(|e| e.get("digest").is_some_and(serde_json::Value::is_string))
        .then(|| entries.clone())
}

/// The digest an index entry names.
pub fn entry_digest(entry: &serde_json::Value) -> &str {
    entry
        .get("digest")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}

/// `existing` entries with every entry of `added` whose digest is not there yet
/// appended, in order, or `None` when nothing is missing (the index stays as it is).
pub fn merge_referrers(
    existing: &[serde_json::Value],
    added: &[serde_json::Value],
) -> Option<Vec<serde_json::Value>> {
    let mut merged = existing.to_vec();
    for entry in added {
        if !merged
            .iter()
            .any(|e| entry_digest(e) == entry_digest(entry))
        {
            merged.push(entry.clone());
        }
    }
    (merged.len() > existing.len()).then_some(merged)
}

/// An OCI image index over `entries`: the body of a fallback tag.
pub fn referrers_index(entries: &[serde_json::Value]) -> bytes::Bytes {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
        "manifests": entries,
    });
    bytes::Bytes::from(serde_json::to_vec(&index).expect("an index of JSON values serialises"))
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn first_error(body: &[u8]) -> Option<ErrorEntry> {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()?
        .errors
        .into_iter()
        .next()
}

/// The registry's own error code (e.g. `MANIFEST_BLOB_UNKNOWN`), if the body has one.
pub fn error_code(body: &[u8]) -> Option<String> {
    first_error(body).map(|e| e.code).filter(|c| !c.is_empty())
}

/// The registry's own error code and message from an error body, as ": CODE message".
pub fn error_detail(body: &[u8]) -> String {
    if let Some(e) = first_error(body) {
        return format!(": {} {}", e.code, e.message).trim_end().to_owned();
    }
    // A non-JSON body (HTML from a proxy, binary): a short printable excerpt at most.
    let Ok(text) = std::str::from_utf8(body) else {
        return String::new();
    };
    let text: String = text.chars().filter(|c| !c.is_control()).take(120).collect();
    let text = text.trim();
    if text.is_empty() || text.starts_with('<') {
        String::new()
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn parses_each_kind() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_IMAGE_MEDIA_TYPE}","digest":"{D}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        match parse_manifest(OCI_IMAGE_INDEX_MEDIA_TYPE, index.as_bytes()).unwrap() {
            ManifestKind::Index(m) => {
                assert_eq!(m.len(), 1);
                assert_eq!(
                    m[0].platform.as_ref().unwrap().to_string(),
                    "linux/arm64/v8"
                );
            }
            other => panic!("{other:?}"),
        }
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D}","size":2}},"layers":[{{"digest":"{D}","size":3,"urls":["http://x"]}}]}}"#
        );
        match parse_manifest(IMAGE_MANIFEST_MEDIA_TYPE, image.as_bytes()).unwrap() {
            ManifestKind::Image(b) => {
                assert_eq!(b.len(), 2);
                assert_eq!(b[1].urls.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_manifest(SCHEMA1_MEDIA_TYPES[1], b"{}"),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            parse_manifest("application/json", br#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(ManifestError::Schema1)
        ));
        assert!(parse_manifest(OCI_IMAGE_MEDIA_TYPE, b"not json").is_err());
    }

    #[test]
    fn media_type_prefers_specific_content_type() {
        assert_eq!(
            manifest_media_type(
                Some("application/vnd.oci.image.manifest.v1+json; charset=x"),
                b"{}"
            ),
            OCI_IMAGE_MEDIA_TYPE
        );
        assert_eq!(
            manifest_media_type(Some("application/json"), br#"{"mediaType":"m/x"}"#),
            "m/x"
        );
        assert_eq!(
            manifest_media_type(None, br#"{"manifests":[]}"#),
            OCI_IMAGE_INDEX_MEDIA_TYPE
        );
    }

    #[test]
    fn referrer_tags_and_merge() {
        let hex = "a".repeat(64);
        let d = format!("sha256:{hex}");
        assert_eq!(fallback_tag(&d), format!("sha256-{hex}"));
        assert_eq!(cosign_tags(&d)[0], format!("sha256-{hex}.sig"));
        for (tag, is) in [
            (format!("sha256-{hex}"), true),
            (format!("sha256-{hex}.sig"), true),
            (format!("sha256-{hex}.att"), true),
            (format!("sha256-{hex}.sbom"), true),
            (format!("sha256-{hex}.other"), false),
            (format!("sha256-{}", "A".repeat(64)), false),
            ("sha256-abc".to_owned(), false),
            ("latest".to_owned(), false),
        ] {
            assert_eq!(is_referrer_tag(&tag), is, "{tag}");
        }
        let e = |d: &str| serde_json::json!({"digest": d, "size": 1});
        let existing = vec![e("sha256:1"), e("sha256:2")];
        assert!(merge_referrers(&existing, &[e("sha256:2")]).is_none());
        let merged =
            merge_referrers(&existing, &[e("sha256:3"), e("sha256:1"), e("sha256:3")]).unwrap();
        let digests: Vec<_> = merged.iter().map(entry_digest).collect();
        assert_eq!(digests, ["sha256:1", "sha256:2", "sha256:3"]);
        let index = referrers_index(&merged);
        assert_eq!(index_entries(&index).unwrap().len(), 3);
        assert!(index_entries(b"{\"layers\":[]}").is_none());
    }

    #[test]
    fn referrer_info_names_the_artifact() {
        let sbom = br#"{"artifactType":"application/spdx+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:1"},"subject":{"digest":"sha256:s"},"annotations":{"a":"b"}}"#;
        let info = referrer_info(OCI_IMAGE_MEDIA_TYPE, sbom);
        assert_eq!(info.subject.as_deref(), Some("sha256:s"));
        assert_eq!(info.kind, "application/spdx+json");
        let sig = br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:1"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:2"}]}"#;
        assert_eq!(
            referrer_info(OCI_IMAGE_MEDIA_TYPE, sig).kind,
            "application/vnd.dev.cosign.simplesigning.v1+json"
        );
        let d = referrer_descriptor(OCI_IMAGE_MEDIA_TYPE, "sha256:x", sbom);
        assert_eq!(d["artifactType"], "application/spdx+json");
        assert_eq!(d["annotations"]["a"], "b");
        assert_eq!(d["size"], sbom.len());
    }

    #[test]
    fn error_detail_reads_envelope_and_hides_html() {
        assert_eq!(
            error_detail(
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
            ),
            ": UNAUTHORIZED authentication required"
        );
        assert_eq!(error_detail(b"<html>502</html>"), "");
        assert_eq!(error_detail(&[0xff, 0xfe]), "");
        assert_eq!(
            error_detail(b"Too Many Requests (HAP429)"),
            ": Too Many Requests (HAP429)"
        );
    }
}
