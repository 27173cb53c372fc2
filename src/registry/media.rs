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
