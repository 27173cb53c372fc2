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
