//! Pushing built images into a registry over plain HTTP, the way a client would:
//! monolithic blob uploads, then manifests (children before their index).

use bytes::Bytes;
use reqwest::{Client, StatusCode, Url};

use super::image::{BlobInfo, Image, Index};
use super::registry::Registry;

/// What was pushed and where: everything an oracle check needs.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `127.0.0.1:PORT` of the registry it was pushed to.
    pub host: String,
    /// Repository name, e.g. `team/app`.
    pub repo: String,
    /// Tag it was pushed under.
    pub tag: String,
    /// Digest of the top manifest (sha256 of the exact bytes pushed).
    pub digest: String,
    /// Media type of the top manifest.
    pub media_type: String,
    /// Every distinct blob (configs and layers) the image or index needs.
    pub blobs: Vec<BlobInfo>,
    /// Child manifest digests of an index; empty for a single image.
    pub children: Vec<String>,
}

impl Pushed {
    /// `HOST/REPO:TAG`.
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.host, self.repo, self.tag)
    }

    /// `HOST/REPO@DIGEST`.
    pub fn by_digest(&self) -> String {
        format!("{}/{}@{}", self.host, self.repo, self.digest)
    }

    /// Sum of all blob sizes.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

impl Registry {
    /// Pushes a single-platform image as `repo:tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) -> Pushed {
        let api = Api::new(self);
        api.push_image_content(repo, image).await;
        api.put_manifest(
            repo,
            tag,
            image.format.manifest_type(),
            &image.manifest,
            &image.digest,
        )
        .await;
        Pushed {
            host: self.host(),
            repo: repo.to_string(),
            tag: tag.to_string(),
            digest: image.digest.clone(),
            media_type: image.format.manifest_type().to_string(),
            blobs: image.blobs(),
            children: Vec::new(),
        }
    }

    /// Pushes every platform image by digest, then the index as `repo:tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, index: &Index) -> Pushed {
        let api = Api::new(self);
        for image in &index.images {
            api.push_image_content(repo, image).await;
            let media_type = image.format.manifest_type();
            api.put_manifest(
                repo,
                &image.digest,
                media_type,
                &image.manifest,
                &image.digest,
            )
            .await;
        }
        let media_type = index.format.index_type();
        api.put_manifest(repo, tag, media_type, &index.manifest, &index.digest)
            .await;
        Pushed {
            host: self.host(),
            repo: repo.to_string(),
            tag: tag.to_string(),
            digest: index.digest.clone(),
            media_type: media_type.to_string(),
            blobs: index.blobs(),
            children: index.children(),
        }
    }

    /// Pushes an artifact's blobs, then its manifest as `reference` (its digest, or a
    /// cosign tag); returns the digest.
    pub async fn push_artifact(
        &self,
        repo: &str,
        reference: &str,
        artifact: &super::image::Artifact,
    ) -> String {
        let api = Api::new(self);
        for blob in &artifact.blobs {
            let digest = super::image::sha256_digest(blob);
            api.put_blob(repo, &digest, blob.clone()).await;
        }
        api.put_manifest(
            repo,
            reference,
            &artifact.media_type,
            &artifact.manifest,
            &artifact.digest,
        )
        .await;
        artifact.digest.clone()
    }

    /// Pushes a referrers index over `artifacts` (already pushed) as `sha256-<hex>` of
    /// `subject`; returns its digest.
    pub async fn push_referrers_index(
        &self,
        repo: &str,
        subject: &super::image::Subject,
        artifacts: &[&super::image::Artifact],
    ) -> String {
        let bytes = super::image::referrers_index(artifacts);
        self.push_raw_manifest(
            repo,
            &subject.fallback_tag(),
            "application/vnd.oci.image.index.v1+json",
            bytes,
        )
        .await
    }

    /// Uploads raw blob bytes to `repo` (any content, any size, 0 included); returns
    /// the digest.
    pub async fn push_blob(&self, repo: &str, data: Bytes) -> String {
        let digest = super::image::sha256_digest(&data);
        Api::new(self).put_blob(repo, &digest, data).await;
        digest
    }

    /// PUTs raw manifest bytes of any media type as `reference`; returns the digest.
    pub async fn push_raw_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> String {
        let digest = super::image::sha256_digest(&bytes);
        Api::new(self)
            .put_manifest(repo, reference, media_type, &bytes, &digest)
            .await;
        digest
    }

    /// Deletes a blob from `repo` (storage.delete is enabled), e.g. to prove the oracle
    /// notices a missing blob.
    pub async fn delete_blob(&self, repo: &str, digest: &str) {
        let api = Api::new(self);
        let url = format!("{}/v2/{repo}/blobs/{digest}", api.base);
        let resp = api
            .auth(api.client.delete(&url))
            .send()
            .await
            .expect("DELETE blob");
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "DELETE {url}");
    }
}

/// A blob too large to hold in memory: `size` bytes from a seeded generator, made chunk by
/// chunk each time it is read (once to hash, once to upload), never whole.
#[derive(Debug, Clone, Copy)]
pub struct StreamedBlob {
    seed: u64,
    size: u64,
}

/// Size of each generated chunk.
const CHUNK: usize = 1 << 20;

impl StreamedBlob {
    /// `size` bytes of random (incompressible) data, different on every call.
    pub fn random(size: u64) -> StreamedBlob {
        StreamedBlob {
            seed: rand::random(),
            size,
        }
    }

    /// The bytes, chunk by chunk, generated as they are pulled.
    pub fn chunks(self) -> impl Iterator<Item = Bytes> + Send + 'static {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(self.seed);
        let mut left = self.size;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64) as usize;
            let mut chunk = vec![0u8; n];
            rng.fill_bytes(&mut chunk);
            left -= n as u64;
            Some(Bytes::from(chunk))
        })
    }

    /// `sha256:<hex>` of the bytes, hashed as they are generated.
    pub fn digest(self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        self.chunks().for_each(|c| hasher.update(&c));
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

impl Registry {
    /// Pushes an OCI image whose one layer (`application/vnd.oci.image.layer.v1.tar`,
    /// opaque bytes to a registry) is `layer`, streamed: for memory-bound tests with
    /// layers of hundreds of MiB.
    pub async fn push_streamed_image(&self, repo: &str, tag: &str, layer: StreamedBlob) -> Pushed {
        let api = Api::new(self);
        let layer_digest = layer.digest();
        let config = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            }))
            .unwrap(),
        );
        let config_digest = super::image::sha256_digest(&config);
        api.put_blob(repo, &config_digest, config.clone()).await;
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
            layer.chunks().map(Ok::<Bytes, std::io::Error>),
        ));
        api.put_blob_body(repo, &layer_digest, body).await;
        let media_type = "application/vnd.oci.image.manifest.v1+json";
        let manifest = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": media_type,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer_digest, "size": layer.size}],
            }))
            .unwrap(),
        );
        let digest = super::image::sha256_digest(&manifest);
        api.put_manifest(repo, tag, media_type, &manifest, &digest)
            .await;
        Pushed {
            host: self.host(),
            repo: repo.to_string(),
            tag: tag.to_string(),
            digest,
            media_type: media_type.to_string(),
            blobs: vec![
                BlobInfo {
                    digest: config_digest,
                    size: config.len() as u64,
                },
                BlobInfo {
                    digest: layer_digest,
                    size: layer.size,
                },
            ],
            children: Vec::new(),
        }
    }
}

/// The distribution API of one registry, with its credentials.
struct Api {
    client: Client,
    base: String,
    creds: Option<(String, String)>,
}

impl Api {
    fn new(registry: &Registry) -> Api {
        Api {
            // Test registries with TLS use certificates of a test CA.
            client: Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .expect("push client"),
            base: registry.url(),
            creds: registry.creds().map(|c| (c.user.clone(), c.pass.clone())),
        }
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.creds {
            Some((user, pass)) => req.basic_auth(user, Some(pass)),
            None => req,
        }
    }

    async fn push_image_content(&self, repo: &str, image: &Image) {
        self.put_blob(repo, &image.config_digest, image.config.clone())
            .await;
        for layer in &image.layers {
            self.put_blob(repo, &layer.digest, layer.data.clone()).await;
        }
    }

    /// Uploads a blob unless the repository has it: POST an upload, PUT it whole.
    async fn put_blob(&self, repo: &str, digest: &str, data: Bytes) {
        self.put_blob_body(repo, digest, data.into()).await
    }

    /// [`Api::put_blob`] for any body, a stream included.
    async fn put_blob_body(&self, repo: &str, digest: &str, data: reqwest::Body) {
        let head = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self
            .auth(self.client.head(&head))
            .send()
            .await
            .expect("HEAD blob");
        if resp.status() == StatusCode::OK {
            return;
        }
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self
            .auth(self.client.post(&start))
            .send()
            .await
            .expect("POST upload");
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST {start}");
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("upload Location header")
            .to_string();
        let mut url = Url::parse(&start)
            .unwrap()
            .join(&location)
            .expect("upload URL");
        url.query_pairs_mut().append_pair("digest", digest);
        let resp = self
            .auth(self.client.put(url.clone()))
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .expect("PUT blob");
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "PUT blob {digest} to {repo}: {body}"
        );
    }

    /// PUTs manifest bytes as `reference` and checks the registry's digest.
    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &Bytes,
        digest: &str,
    ) {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self
            .auth(self.client.put(&url))
            .header("content-type", media_type)
            .body(bytes.clone())
            .send()
            .await
            .expect("PUT manifest");
        let status = resp.status();
        let got = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "PUT manifest {repo}:{reference}: {body}"
        );
        assert_eq!(
            got.as_deref(),
            Some(digest),
            "registry digest of {repo}:{reference}"
        );
    }
}
