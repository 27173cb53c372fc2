//! Images built in memory: random incompressible layers, a real config, an OCI or
//! Docker schema 2 manifest, and OCI indexes / Docker manifest lists over them.

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Which manifest family an image or index is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest / OCI image index.
    Oci,
    /// Docker schema 2 manifest / Docker manifest list.
    Docker,
}

impl Format {
    /// Media type of a single-image manifest.
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.manifest.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    /// Media type of a multi-platform index.
    pub fn index_type(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.index.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }

    /// Media type of the image config blob.
    pub fn config_type(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.config.v1+json",
            Format::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }

    /// Media type of a gzip layer.
    pub fn layer_type(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
            Format::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }
}

/// A content-addressed blob as it is stored in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
}

/// One layer: a gzip'd tar holding one file of random bytes.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The compressed bytes, as pushed.
    pub data: Bytes,
    /// Digest of `data`.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

impl Layer {
    /// A layer whose single file holds `size` random (incompressible) bytes. The gzip
    /// stream uses stored blocks, so the blob is `size` plus about 1.5 KiB of framing.
    pub fn random(size: usize) -> Layer {
        let mut payload = vec![0u8; size];
        // A fast non-cryptographic generator, seeded from the OS-backed one: still
        // incompressible and unique per layer, and ten times faster in debug builds.
        rand::rngs::SmallRng::from_rng(&mut rand::rng()).fill_bytes(&mut payload);
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        let name = format!("data-{}.bin", &sha256_digest(&payload)[7..19]);
        builder
            .append_data(&mut header, name, payload.as_slice())
            .expect("tar append");
        let tar = builder.into_inner().expect("tar finish");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip");
        let data = Bytes::from(gz.finish().expect("gzip finish"));
        Layer {
            digest: sha256_digest(&data),
            diff_id: sha256_digest(&tar),
            data,
        }
    }

    /// Digest and size of the pushed blob.
    pub fn info(&self) -> BlobInfo {
        BlobInfo {
            digest: self.digest.clone(),
            size: self.data.len() as u64,
        }
    }
}

/// An OS / architecture pair of a platform image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    /// `os` field, e.g. `linux`.
    pub os: &'static str,
    /// `architecture` field, e.g. `amd64`.
    pub architecture: &'static str,
    /// `variant` field, e.g. `v8`.
    pub variant: Option<&'static str>,
}

impl Platform {
    /// linux/amd64.
    pub const AMD64: Platform = Platform {
        os: "linux",
        architecture: "amd64",
        variant: None,
    };
    /// linux/arm64/v8.
    pub const ARM64: Platform = Platform {
        os: "linux",
        architecture: "arm64",
        variant: Some("v8"),
    };
    /// linux/arm/v7.
    pub const ARMV7: Platform = Platform {
        os: "linux",
        architecture: "arm",
        variant: Some("v7"),
    };
    /// linux/s390x.
    pub const S390X: Platform = Platform {
        os: "linux",
        architecture: "s390x",
        variant: None,
    };

    fn json(&self) -> Value {
        let mut v = json!({"architecture": self.architecture, "os": self.os});
        if let Some(variant) = self.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

/// A single-platform image: config, layers and the manifest bytes that name them.
#[derive(Debug, Clone)]
pub struct Image {
    /// OCI or Docker.
    pub format: Format,
    /// The platform written into the config (and the index entry).
    pub platform: Platform,
    /// Config blob bytes.
    pub config: Bytes,
    /// Digest of `config`.
    pub config_digest: String,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// The exact manifest bytes pushed.
    pub manifest: Bytes,
    /// Digest of `manifest`.
    pub digest: String,
}

impl Image {
    /// A linux/amd64 image of fresh random layers with the given payload sizes.
    pub fn random(format: Format, layer_sizes: &[usize]) -> Image {
        let layers = layer_sizes.iter().map(|&s| Layer::random(s)).collect();
        Image::new(format, Platform::AMD64, layers)
    }

    /// An image of the given layers: writes a real config (architecture, os,
    /// `rootfs.diff_ids`, history) and a manifest in `format`.
    pub fn new(format: Format, platform: Platform, layers: Vec<Layer>) -> Image {
        let mut config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers",
                       "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
            "history": layers.iter().enumerate().map(|(i, l)| json!({
                "created": "2024-01-01T00:00:00Z",
                "created_by": format!("imagersync test layer {i} ({} bytes)", l.data.len()),
            })).collect::<Vec<_>>(),
        });
        if let Some(variant) = platform.variant {
            config["variant"] = json!(variant);
        }
        let config = Bytes::from(serde_json::to_vec(&config).expect("config json"));
        let config_digest = sha256_digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": format.manifest_type(),
            "config": {"mediaType": format.config_type(), "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": format.layer_type(), "digest": l.digest, "size": l.data.len(),
            })).collect::<Vec<_>>(),
        });
        let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).expect("manifest json"));
        Image {
            format,
            platform,
            digest: sha256_digest(&manifest),
            config,
            config_digest,
            layers,
            manifest,
        }
    }

    /// The config blob and every layer, in manifest order.
    pub fn blobs(&self) -> Vec<BlobInfo> {
        let config = BlobInfo {
            digest: self.config_digest.clone(),
            size: self.config.len() as u64,
        };
        std::iter::once(config)
            .chain(self.layers.iter().map(Layer::info))
            .collect()
    }
}

/// A multi-platform index (OCI index or Docker manifest list) over several images.
#[derive(Debug, Clone)]
pub struct Index {
    /// OCI or Docker.
    pub format: Format,
    /// The platform images, in index order.
    pub images: Vec<Image>,
    /// The exact index bytes pushed.
    pub manifest: Bytes,
    /// Digest of `manifest`.
    pub digest: String,
}

impl Index {
    /// One image per platform, all sharing a random base layer of `base_size` bytes and
    /// each with its own random layer of `own_size` bytes.
    pub fn random(
        format: Format,
        platforms: &[Platform],
        base_size: usize,
        own_size: usize,
    ) -> Index {
        let base = Layer::random(base_size);
        let images = platforms
            .iter()
            .map(|&p| Image::new(format, p, vec![base.clone(), Layer::random(own_size)]))
            .collect();
        Index::new(format, images)
    }

    /// The index over `images`; every image must be in `format` too.
    pub fn new(format: Format, images: Vec<Image>) -> Index {
        assert!(
            images.iter().all(|i| i.format == format),
            "index and images must share a format"
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": format.index_type(),
            "manifests": images.iter().map(|i| json!({
                "mediaType": format.manifest_type(),
                "digest": i.digest,
                "size": i.manifest.len(),
                "platform": i.platform.json(),
            })).collect::<Vec<_>>(),
        });
        let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).expect("index json"));
        Index {
            format,
            digest: sha256_digest(&manifest),
            images,
            manifest,
        }
    }

    /// Every distinct blob of every image (shared layers once).
    pub fn blobs(&self) -> Vec<BlobInfo> {
        let mut all: Vec<BlobInfo> = Vec::new();
        for blob in self.images.iter().flat_map(Image::blobs) {
            if !all.contains(&blob) {
                all.push(blob);
            }
        }
        all
    }

    /// Digests of the child manifests, in index order.
    pub fn children(&self) -> Vec<String> {
        self.images.iter().map(|i| i.digest.clone()).collect()
    }
}

/// The OCI empty config descriptor's media type (`{}`), used by artifacts.
pub const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// cosign's simple-signing payload layer.
pub const COSIGN_SIGNATURE_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// An in-toto attestation statement.
pub const IN_TOTO_TYPE: &str = "application/vnd.in-toto+json";
/// An SPDX SBOM.
pub const SPDX_TYPE: &str = "application/spdx+json";

/// A manifest another one refers to: what a referrer's `subject` names.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Media type of the subject manifest.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
}

impl Subject {
    /// The subject descriptor of an image.
    pub fn of_image(image: &Image) -> Subject {
        Subject {
            media_type: image.format.manifest_type().to_owned(),
            digest: image.digest.clone(),
            size: image.manifest.len() as u64,
        }
    }

    /// The subject descriptor of an index.
    pub fn of_index(index: &Index) -> Subject {
        Subject {
            media_type: index.format.index_type().to_owned(),
            digest: index.digest.clone(),
            size: index.manifest.len() as u64,
        }
    }

    /// The subject descriptor of another artifact (a referrer of a referrer).
    pub fn of_artifact(artifact: &Artifact) -> Subject {
        Subject {
            media_type: artifact.media_type.clone(),
            digest: artifact.digest.clone(),
            size: artifact.manifest.len() as u64,
        }
    }

    /// `sha256-<hex>`: the referrers tag schema's tag of this subject.
    pub fn fallback_tag(&self) -> String {
        self.digest.replacen(':', "-", 1)
    }

    /// cosign's tag for `suffix` (`sig`, `att`, `sbom`) of this subject.
    pub fn cosign_tag(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.fallback_tag())
    }
}

/// A signature, attestation or SBOM: an OCI manifest with its blobs, as cosign, oras or
/// a build tool pushes it.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Config and layer blobs (bytes), in manifest order.
    pub blobs: Vec<Bytes>,
    /// The exact manifest bytes.
    pub manifest: Bytes,
    /// Digest of `manifest`.
    pub digest: String,
    /// Always the OCI image manifest type (what artifacts use since image-spec 1.1).
    pub media_type: String,
    /// `artifactType`, or the config media type when there is none (the spec's rule
    /// for the referrers list).
    pub artifact_type: String,
    /// The manifest's annotations.
    pub annotations: Value,
}

impl Artifact {
    /// A cosign signature as cosign (legacy tag scheme) lays it out: a small image
    /// config, one simple-signing layer naming the image digest, the signature and the
    /// certificate in the layer's annotations. No `subject`: it lives at the tag
    /// `sha256-<hex>.sig`.
    pub fn cosign_signature(subject: &Subject, reference: &str) -> Artifact {
        let payload = json!({
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": subject.digest},
                "type": "cosign container image signature",
            },
            "optional": null,
        });
        let payload = Bytes::from(serde_json::to_vec(&payload).unwrap());
        let config = json!({
            "architecture": "", "os": "", "created": "0001-01-01T00:00:00Z",
            "config": {}, "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&payload)]},
            "history": [{"created": "0001-01-01T00:00:00Z"}],
        });
        let config = Bytes::from(serde_json::to_vec(&config).unwrap());
        let mut signature = vec![0u8; 64];
        rand::rng().fill_bytes(&mut signature);
        let layer_annotations = json!({
            "dev.cosignproject.cosign/signature": hex::encode(&signature),
            "dev.sigstore.cosign/certificate": "-----BEGIN CERTIFICATE-----\nMIIB (test)\n-----END CERTIFICATE-----\n",
        });
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": Format::Oci.manifest_type(),
            "config": {"mediaType": Format::Oci.config_type(), "digest": sha256_digest(&config), "size": config.len()},
            "layers": [{"mediaType": COSIGN_SIGNATURE_TYPE, "digest": sha256_digest(&payload),
                        "size": payload.len(), "annotations": layer_annotations}],
        });
        Artifact::finish(
            manifest,
            vec![config, payload],
            Format::Oci.config_type(),
            Value::Null,
        )
    }

    /// An in-toto attestation with `subject`: the statement is the config (media type
    /// `application/vnd.in-toto+json`, no `artifactType`), a DSSE envelope the layer.
    pub fn attestation(subject: &Subject) -> Artifact {
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "image", "digest": {"sha256": &subject.digest[7..]}}],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {"buildDefinition": {"buildType": "imagersync-test"}},
        });
        let statement = Bytes::from(serde_json::to_vec(&statement).unwrap());
        let envelope = json!({"payloadType": IN_TOTO_TYPE, "payload": hex::encode(&statement), "signatures": []});
        let envelope = Bytes::from(serde_json::to_vec(&envelope).unwrap());
        let annotations = json!({"org.opencontainers.image.created": "2026-01-01T00:00:00Z"});
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": Format::Oci.manifest_type(),
            "config": {"mediaType": IN_TOTO_TYPE, "digest": sha256_digest(&statement), "size": statement.len()},
            "layers": [{"mediaType": "application/vnd.dsse.envelope.v1+json",
                        "digest": sha256_digest(&envelope), "size": envelope.len()}],
            "subject": subject_json(subject),
            "annotations": annotations,
        });
        Artifact::finish(
            manifest,
            vec![statement, envelope],
            IN_TOTO_TYPE,
            annotations,
        )
    }

    /// An artifact of `artifact_type` with the empty config and one layer of random
    /// JSON-ish content, referring to `subject` (an SBOM, a bundle, a signature).
    pub fn with_subject(subject: &Subject, artifact_type: &str) -> Artifact {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let content = json!({"spdxVersion": "SPDX-2.3", "name": "imagersync-test",
                             "documentNamespace": format!("urn:uuid:{}", hex::encode(nonce))});
        let content = Bytes::from(serde_json::to_vec(&content).unwrap());
        let empty = Bytes::from_static(b"{}");
        let annotations = json!({
            "org.opencontainers.image.created": "2026-01-01T00:00:00Z",
            "org.example.nonce": hex::encode(nonce),
        });
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": Format::Oci.manifest_type(),
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": sha256_digest(&empty), "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": sha256_digest(&content), "size": content.len()}],
            "subject": subject_json(subject),
            "annotations": annotations,
        });
        Artifact::finish(manifest, vec![empty, content], artifact_type, annotations)
    }

    fn finish(
        manifest: Value,
        blobs: Vec<Bytes>,
        artifact_type: &str,
        annotations: Value,
    ) -> Artifact {
        let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
        Artifact {
            digest: sha256_digest(&manifest),
            manifest,
            blobs,
            media_type: Format::Oci.manifest_type().to_owned(),
            artifact_type: artifact_type.to_owned(),
            annotations,
        }
    }

    /// The descriptor a referrers list holds for this artifact.
    pub fn descriptor(&self) -> Value {
        let mut d = json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.manifest.len(),
            "artifactType": self.artifact_type,
        });
        if !self.annotations.is_null() {
            d["annotations"] = self.annotations.clone();
        }
        d
    }
}

fn subject_json(subject: &Subject) -> Value {
    json!({"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size})
}

/// An OCI index listing `artifacts`: the body of a `sha256-<hex>` fallback tag.
pub fn referrers_index(artifacts: &[&Artifact]) -> Bytes {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": Format::Oci.index_type(),
        "manifests": artifacts.iter().map(|a| a.descriptor()).collect::<Vec<_>>(),
    });
    Bytes::from(serde_json::to_vec_pretty(&index).unwrap())
}
