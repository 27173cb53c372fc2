//! One registry, one credential: the distribution-API calls the engine needs.
//!
//! A client lives as long as the engine, so its connections, its learnt auth challenge and
//! its bearer tokens serve every sync that touches the same registry.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::{OnceCell, RwLock};

use super::auth::{says_token_expired, Challenge, TokenAnswer, TokenCache, CLIENT_ID};
use super::credentials::{CredentialProvider, Login};
use super::digest::digest_of;
use super::error::{describe_transport_error, RegistryError};
use super::limiter::{Quota, RateLimiter};
use super::media;
use super::tls::{self, TlsFiles};
use super::trust::certificate_problem;
use super::watchdog::Activity;

/// Largest manifest accepted (distribution's own limit; containers/image uses the same).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest token endpoint answer read.
const MAX_TOKEN_BYTES: usize = 1 << 20;
/// Largest error body read; the rest is dropped.
const MAX_ERROR_BYTES: usize = 1 << 20;
/// Tags asked for per page of a tag list.
const TAGS_PAGE_SIZE: usize = 1000;
/// Pages of a tag list followed at most (a million tags at the page size above).
const MAX_TAG_PAGES: usize = 1000;

/// What a request needs permission for; decides the bearer token scope.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Read `repository`.
    Pull(&'a str),
    /// Read and write `repository`.
    Push(&'a str),
    /// Write `repository` and read `from`, for a cross-repository mount.
    Mount {
        /// Repository written.
        repository: &'a str,
        /// Repository the blob is mounted from.
        from: &'a str,
    },
}

impl Access<'_> {
    /// The token cache key: every scope of the request.
    fn key(&self) -> String {
        self.scopes().join(" ")
    }

    fn scopes(&self) -> Vec<String> {
        match self {
            Access::Pull(r) => vec![format!("repository:{r}:pull")],
            Access::Push(r) => vec![format!("repository:{r}:pull,push")],
            Access::Mount { repository, from } => vec![
                format!("repository:{repository}:pull,push"),
                format!("repository:{from}:pull"),
            ],
        }
    }
}

/// Told of a pull's quota waits: `Some((wait, why))` before each, `None` once after the
/// last (see [`RegistryClient::wait_for_pull_quota`]).
pub type QuotaReport<'a> = dyn Fn(Option<(Duration, &str)>) + Sync + 'a;

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// host[:port] as written in image references (`docker.io` for Docker Hub).
    pub registry: String,
    /// Where the login comes from (anonymous, fixed, a helper, a password file).
    pub credentials: Arc<CredentialProvider>,
    /// How to secure the connection.
    pub transport: Transport,
    /// Extra trust anchors and the client certificate, for HTTPS transports.
    pub tls: TlsFiles,
    /// Connect and idle-read limits.
    pub timeouts: Timeouts,
    /// Pulls wait while the registry announces fewer remaining pulls than this
    /// (`task.dockerhub_min_remaining`).
    pub pull_floor: u64,
}

/// Network time limits. There is deliberately no total limit: a multi-GB blob may take
/// long, and only a stalled peer is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for a TCP + TLS connection.
    pub connect: Duration,
    /// Longest wait for any read (headers or the next body bytes).
    pub idle_read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            idle_read: Duration::from_secs(60),
        }
    }
}

/// How the connection to a registry is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS with certificate verification (the platform's roots and the endpoint's
    /// anchors).
    Verified,
    /// HTTPS without certificate verification.
    SkipVerify,
    /// Plain HTTP.
    PlainHttp,
    /// The seed's `insecure`: HTTPS without verification, falling back to plain HTTP.
    Insecure,
}

impl Transport {
    /// Whether this transport deserves a start-up warning, and why.
    pub fn warning(&self) -> Option<&'static str> {
        match self {
            Transport::Verified => None,
            Transport::SkipVerify => Some("TLS certificates are not verified"),
            Transport::PlainHttp => Some("plain HTTP: traffic and credentials are not encrypted"),
            Transport::Insecure => Some(
                "insecure: TLS certificates are not verified and plain HTTP is used when TLS fails",
            ),
        }
    }
}

/// A manifest as served: its exact bytes, media type and digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The exact bytes, pushed unchanged so the digest is preserved.
    pub bytes: bytes::Bytes,
    /// `Content-Type` the registry served (or the one inside the manifest).
    pub media_type: String,
    /// Digest of `bytes`.
    pub digest: String,
}

/// What a blob HEAD at a target found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCheck {
    /// Present, with this size.
    Present(u64),
    /// Absent (404).
    Absent,
    /// The registry refused to say (this 401 or 403): treated as absent.
    Refused(u16),
}

/// The distribution API of one registry, with one credential.
pub struct RegistryClient {
    endpoint: Endpoint,
    /// Host to connect to (Docker Hub's API host differs from its reference name).
    api_host: String,
    http: reqwest::Client,
    /// The same, without a read timeout, for blob uploads.
    upload_http: reqwest::Client,
    /// `scheme://host`, found on first use.
    base: OnceCell<String>,
    challenge: RwLock<Challenge>,
    tokens: TokenCache,
    /// Shared with every other client of the same registry host.
    limiter: Arc<RateLimiter>,
}

impl RegistryClient {
    /// Builds a client; no network traffic until the first call.
    pub fn new(endpoint: Endpoint, limiter: Arc<RateLimiter>) -> Result<Self, RegistryError> {
        let api_host = if endpoint.registry == "docker.io" {
            "registry-1.docker.io".to_owned()
        } else {
            endpoint.registry.clone()
        };
        let setup_error = |cause: String| RegistryError::Protocol {
            registry: endpoint.registry.clone(),
            step: "setting up the connection".into(),
            cause,
        };
        let verified = match endpoint.transport {
            Transport::Verified => Some(tls::verified_config(&endpoint.tls).map_err(setup_error)?),
            _ => None,
        };
        let http = http_client(
            &endpoint,
            verified.clone(),
            Some(endpoint.timeouts.idle_read),
        )?;
        // Uploads get no read timeout (it would cut long uploads); see watchdog.rs.
        let upload_http = http_client(&endpoint, verified, None)?;
        Ok(Self {
            endpoint,
            api_host,
            http,
            upload_http,
            base: OnceCell::new(),
            challenge: RwLock::new(Challenge::None),
            tokens: TokenCache::default(),
            limiter,
        })
    }

    /// host[:port] of this registry, as written in references.
    pub fn registry(&self) -> &str {
        &self.endpoint.registry
    }

    /// Where this client's login comes from.
    pub fn credentials(&self) -> &CredentialProvider {
        &self.endpoint.credentials
    }

    /// The login to use now, or an auth error naming the step.
    async fn login(&self, step: &str) -> Result<Login, RegistryError> {
        self.endpoint
            .credentials
            .login()
            .await
            .map_err(|cause| RegistryError::Auth {
                registry: self.registry().to_owned(),
                step: step.to_owned(),
                cause,
            })
    }

    /// HEAD a manifest: its digest and media type, or `None` when the registry has none.
    pub async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(String, String)>, RegistryError> {
        let step = format!("checking manifest {repository}:{reference}");
        let path = manifest_path(repository, reference);
        let resp = self
            .send(&step, Access::Pull(repository), |c, base| {
                c.head(format!("{base}{path}"))
                    .header(ACCEPT, media::MANIFEST_ACCEPT)
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.expect(resp, &step, &[StatusCode::OK]).await?;
        let digest = header_str(resp.headers(), "docker-content-digest");
        let media_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        // Without the digest header the answer proves nothing; the caller then copies.
        Ok(digest.map(|d| (d, media_type.unwrap_or_default())))
    }

    /// Waits while the registry's announced pull quota (Docker Hub's `ratelimit-*`
    /// headers, read from every answer) is under the floor, telling `report` how long and
    /// why before each wait (`Some`), and once, after the last wait, that waiting is over
    /// (`None`). Each look again is a HEAD of the manifest, which does not count as a
    /// pull. A wait longer than `max_wait` (a caller who waits for the answer) is not
    /// started: it fails at once with [`RegistryError::RateLimited`].
    pub async fn wait_for_pull_quota(
        &self,
        repository: &str,
        reference: &str,
        max_wait: Option<Duration>,
        report: &QuotaReport<'_>,
    ) -> Result<(), RegistryError> {
        let mut waited = false;
        let outcome = async {
            while let Some((wait, why)) = self.limiter.pull_pause(self.endpoint.pull_floor) {
                if let Some(limit) = max_wait.filter(|limit| wait > *limit) {
                    return Err(RegistryError::RateLimited {
                        registry: self.registry().to_owned(),
                        step: format!("pulling {repository}:{reference}"),
                        cause: format!("{why}: a pull comes back in about {}s", wait.as_secs()),
                        wait,
                        limit,
                    });
                }
                let line = format!(
                    "registry {}: {why}: waiting {}s before pulling",
                    self.registry(),
                    wait.as_secs()
                );
                waited = true;
                report(Some((wait, &line)));
                tokio::time::sleep(wait).await;
                self.manifest_digest(repository, reference).await?;
            }
            Ok(())
        }
        .await;
        if waited {
            report(None);
        }
        outcome
    }

    /// GET a manifest by tag or digest, capped at [`MAX_MANIFEST_BYTES`]; a digest
    /// reference is verified against the bytes.
    pub async fn manifest_get(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let step = format!("fetching manifest {repository}:{reference}");
        self.fetch_manifest(repository, reference, media::MANIFEST_ACCEPT, false, &step)
            .await?
            .ok_or_else(|| self.protocol(&step, "the manifest is missing".into()))
    }

    /// Like [`RegistryClient::manifest_get`] with the given `Accept`, but a 404 is `None`:
    /// for tags that may or may not exist (a referrers fallback tag, cosign's tags).
    pub async fn manifest_find(
        &self,
        repository: &str,
        reference: &str,
        accept: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let step = format!("fetching manifest {repository}:{reference}");
        self.fetch_manifest(repository, reference, accept, true, &step)
            .await
    }

    async fn fetch_manifest(
        &self,
        repository: &str,
        reference: &str,
        accept: &str,
        missing_ok: bool,
        step: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let step = step.to_owned();
        let path = manifest_path(repository, reference);
        let resp = self
            .send(&step, Access::Pull(repository), |c, base| {
                c.get(format!("{base}{path}")).header(ACCEPT, accept)
            })
            .await?;
        if missing_ok && resp.status() == StatusCode::NOT_FOUND {
            // Read the error body so the connection goes back to the pool.
            self.read_capped(resp, MAX_ERROR_BYTES, &step).await?;
            return Ok(None);
        }
        let resp = self.expect(resp, &step, &[StatusCode::OK]).await?;
        let header_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let header_digest = header_str(resp.headers(), "docker-content-digest");
        let bytes = self.read_capped(resp, MAX_MANIFEST_BYTES, &step).await?;
        let like = if reference.contains(':') {
            reference
        } else {
            header_digest.as_deref().unwrap_or("sha256:")
        };
        let digest = digest_of(&bytes, like);
        let expected = if reference.contains(':') {
            Some(reference.to_owned())
        } else {
            header_digest
        };
        if let Some(expected) = expected {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: self.registry().to_owned(),
                    step,
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = media::manifest_media_type(header_type.as_deref(), &bytes);
        Ok(Some(Manifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// PUT a manifest's exact bytes under a tag or its digest. Returns the registry's
    /// `OCI-Subject` answer: a registry with the referrers API names the subject of a
    /// manifest that has one, and then keeps its referrers list itself.
    pub async fn manifest_put(
        &self,
        repository: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<Option<String>, RegistryError> {
        let step = format!("pushing manifest {repository}:{reference}");
        let path = manifest_path(repository, reference);
        let resp = self
            .send(&step, Access::Push(repository), |c, base| {
                c.put(format!("{base}{path}"))
                    .header(CONTENT_TYPE, &manifest.media_type)
                    .body(manifest.bytes.clone())
            })
            .await?;
        let resp = self
            .expect(resp, &step, &[StatusCode::CREATED, StatusCode::OK])
            .await?;
        Ok(header_str(resp.headers(), "oci-subject"))
    }

    /// The referrers of `digest` from the OCI 1.1 referrers API
    /// (`GET /v2/<name>/referrers/<digest>`, following `Link` pages): each entry whole.
    /// `None` when the registry does not serve the API: any answer but 200 with an OCI
    /// index (distribution 2.8 answers a plain-text 404). Server errors and rate limits
    /// stay errors, so the caller's retry can tell a busy registry from one without the API.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<Vec<serde_json::Value>>, RegistryError> {
        let step = format!("listing referrers of {repository}@{digest}");
        let base = reqwest::Url::parse(self.base(&step).await?)
            .map_err(|e| self.protocol(&step, e.to_string()))?;
        let mut next = Some(format!("/v2/{repository}/referrers/{digest}"));
        let mut entries = Vec::new();
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > MAX_TAG_PAGES {
                return Err(self.protocol(
                    &step,
                    format!("more than {MAX_TAG_PAGES} pages of referrers"),
                ));
            }
            let url = base
                .join(&path)
                .map_err(|e| self.protocol(&step, e.to_string()))?;
            if url.origin() != base.origin() {
                return Err(
                    self.protocol(&step, "referrers pagination leads to another host".into())
                );
            }
            let resp = self
                .send(&step, Access::Pull(repository), |c, _| {
                    c.get(url.as_str()).header(ACCEPT, media::OCI_INDEX_ACCEPT)
                })
                .await?;
            let status = resp.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                return Err(self.status_error(resp, &step).await);
            }
            let is_index = header_str(resp.headers(), CONTENT_TYPE.as_str()).is_some_and(|t| {
                t.split(';').next().unwrap_or("").trim() == media::OCI_INDEX_ACCEPT
            });
            if status != StatusCode::OK || !is_index {
                // Read (what a registry without the API says) so the connection is reused.
                let _ = self.read_capped(resp, MAX_ERROR_BYTES, &step).await;
                return Ok(None);
            }
            next = header_str(resp.headers(), "link").and_then(|l| next_link(&l));
            let body = self.read_capped(resp, MAX_MANIFEST_BYTES, &step).await?;
            match media::index_entries(&body) {
                Some(page) => entries.extend(page),
                None => return Ok(None),
            }
        }
        Ok(Some(entries))
    }

    /// Every tag of `repository`, following `Link: <...>; rel="next"` pagination.
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let step = format!("listing tags of {repository}");
        let base = reqwest::Url::parse(self.base(&step).await?)
            .map_err(|e| self.protocol(&step, e.to_string()))?;
        let mut next = Some(format!("/v2/{repository}/tags/list?n={TAGS_PAGE_SIZE}"));
        let mut tags = Vec::new();
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > MAX_TAG_PAGES {
                return Err(
                    self.protocol(&step, format!("more than {MAX_TAG_PAGES} pages of tags"))
                );
            }
            let url = base
                .join(&path)
                .map_err(|e| self.protocol(&step, e.to_string()))?;
            if url.origin() != base.origin() {
                return Err(
                    self.protocol(&step, "tag list pagination leads to another host".into())
                );
            }
            let resp = self
                .send(&step, Access::Pull(repository), |c, _| c.get(url.as_str()))
                .await?;
            let resp = self.expect(resp, &step, &[StatusCode::OK]).await?;
            next = header_str(resp.headers(), "link").and_then(|l| next_link(&l));
            let body = self.read_capped(resp, MAX_MANIFEST_BYTES, &step).await?;
            let page: TagList = serde_json::from_slice(&body)
                .map_err(|e| self.protocol(&step, format!("tag list is not valid JSON: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
        }
        Ok(tags)
    }

    /// Whether `repository` does not exist yet: its tag list answers 404 `NAME_UNKNOWN`.
    /// Any other answer (tags, an empty list, 401, 403, another error) means "not known to
    /// be new". Asked with push access, so the token of the blob checks and uploads that
    /// follow serves it too.
    pub async fn repository_is_new(&self, repository: &str) -> Result<bool, RegistryError> {
        let step = format!("listing tags of {repository}");
        let resp = self
            .send(&step, Access::Push(repository), |c, base| {
                c.get(format!("{base}/v2/{repository}/tags/list?n=1"))
            })
            .await?;
        let status = resp.status();
        // Read (a page of one tag, or an error) so the connection goes back to the pool.
        let body = self.read_capped(resp, MAX_ERROR_BYTES, &step).await?;
        Ok(status == StatusCode::NOT_FOUND
            && media::error_code(&body).as_deref() == Some("NAME_UNKNOWN"))
    }

    /// HEAD a blob at the target. A 401/403 is [`BlobCheck::Refused`], not an error:
    /// registries such as Harbor (robot accounts), Google Artifact Registry and ECR answer
    /// so for a repository they do not have yet, and the upload that follows says whether
    /// writing is refused too.
    pub async fn blob_check(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<BlobCheck, RegistryError> {
        let step = format!("checking blob {digest} in {repository}");
        let resp = self
            .send(&step, Access::Push(repository), |c, base| {
                c.head(format!("{base}/v2/{repository}/blobs/{digest}"))
            })
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(BlobCheck::Present(
                header_str(resp.headers(), CONTENT_LENGTH.as_str())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(BlobCheck::Absent),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Ok(BlobCheck::Refused(resp.status().as_u16()))
            }
            _ => Err(self.status_error(resp, &step).await),
        }
    }

    /// GET a blob; the caller streams the body.
    pub async fn blob_get(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Response, RegistryError> {
        let step = format!("fetching blob {digest} from {repository}");
        let resp = self
            .send(&step, Access::Pull(repository), |c, base| {
                c.get(format!("{base}/v2/{repository}/blobs/{digest}"))
            })
            .await?;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            // Every blob GET asks for the whole blob (no `Range`; a retry starts again
            // from byte 0), so a part is never spliced onto anything: refuse it.
            let range = header_str(resp.headers(), "content-range").unwrap_or_default();
            return Err(self.protocol(
                &step,
                format!("the source answered 206 Partial Content ({range:?}) to a request for the whole blob; partial content is never spliced"),
            ));
        }
        self.expect(resp, &step, &[StatusCode::OK]).await
    }

    /// Asks the registry to mount `digest` from `from` into `repository`. `Ok(false)` when it
    /// declined (202: it opened an upload instead, which is cancelled here).
    pub async fn blob_mount(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> Result<bool, RegistryError> {
        let step = format!("mounting blob {digest} from {from} into {repository}");
        let access = Access::Mount { repository, from };
        let resp = self
            .send(&step, access, |c, base| {
                c.post(format!("{base}/v2/{repository}/blobs/uploads/"))
                    .query(&[("mount", digest), ("from", from)])
                    .header(CONTENT_LENGTH, "0")
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Ok(location) = self.upload_location(&resp, &step).await {
                    // Best effort: an abandoned session is purged by the registry anyway.
                    let _ = self
                        .send(&step, access, |c, _| c.delete(location.as_str()))
                        .await;
                }
                Ok(false)
            }
            _ => Err(self.status_error(resp, &step).await),
        }
    }

    /// Uploads a blob of known `size` from `body` (a stream) with one POST and one PUT.
    /// The PUT fails when nothing moved for the idle limit, never for lasting long.
    pub async fn blob_upload<S>(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Unpin + 'static,
    {
        let location = self.upload_open(repository, digest).await?;
        self.upload_put(repository, &location, digest, size, body)
            .await
    }

    /// Opens an upload session for `digest` in `repository` (the POST) and returns where
    /// its bytes go. Separate from [`Self::upload_put`] so a caller can open it while the
    /// source GET is still on its way: one round trip less per blob on a distant registry.
    pub async fn upload_open(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<reqwest::Url, RegistryError> {
        let step = format!("pushing blob {digest} to {repository}");
        let resp = self
            .send(&step, Access::Push(repository), |c, base| {
                c.post(format!("{base}/v2/{repository}/blobs/uploads/"))
                    .header(CONTENT_LENGTH, "0")
            })
            .await?;
        let resp = self.expect(resp, &step, &[StatusCode::ACCEPTED]).await?;
        self.upload_location(&resp, &step).await
    }

    /// Sends the blob's bytes from `body` to a session [`Self::upload_open`] opened and
    /// closes it with the digest (the PUT). A session is used once: a failed PUT is
    /// retried by the caller from a new session and a fresh GET.
    pub async fn upload_put<S>(
        &self,
        repository: &str,
        location: &reqwest::Url,
        digest: &str,
        size: u64,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Unpin + 'static,
    {
        let step = format!("pushing blob {digest} to {repository}");
        let activity = Activity::new();
        // The stream cannot be replayed, so this request is sent once with the token
        // the POST used; a failure is retried by the caller from a fresh GET.
        let request = self
            .upload_http
            .put(location.as_str())
            .query(&[("digest", digest)])
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(activity.track(body)));
        let (request, used) = self
            .authorize(request, Access::Push(repository), &step)
            .await?;
        self.limiter.ready().await;
        // Half as long again as the read timeout, so a stalled source (whose own read
        // timeout fires first) is reported as the source's fault.
        let idle = self.endpoint.timeouts.idle_read;
        let resp = tokio::select! {
            resp = request.send() => resp.map_err(|e| self.network_error(&step, &e))?,
            () = activity.stalled(idle + idle / 2) => {
                return Err(RegistryError::Network {
                    registry: self.registry().to_owned(),
                    step,
                    cause: format!("timed out: nothing moved for {}s", (idle + idle / 2).as_secs()),
                })
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED && matches!(used, Challenge::Bearer { .. }) {
            // The POST just passed with this token, so it expired on the way: drop it,
            // and the caller's retry fetches a fresh one.
            self.tokens.forget(&Access::Push(repository).key()).await;
            return Err(RegistryError::TokenExpired {
                registry: self.registry().to_owned(),
                step,
            });
        }
        self.expect(resp, &step, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// Resolves the `Location` of an upload answer against the registry and refuses one
    /// that leads to another origin, so credentials and data never go elsewhere.
    async fn upload_location(
        &self,
        resp: &Response,
        step: &str,
    ) -> Result<reqwest::Url, RegistryError> {
        let protocol = |cause: String| self.protocol(step, cause);
        let raw = header_str(resp.headers(), LOCATION.as_str())
            .ok_or_else(|| protocol("upload answer has no Location header".into()))?;
        let base = reqwest::Url::parse(self.base(step).await?)
            .map_err(|e| protocol(format!("bad registry URL: {e}")))?;
        let url = base
            .join(&raw)
            .map_err(|e| protocol(format!("bad upload Location: {e}")))?;
        if url.origin() != base.origin() {
            return Err(protocol(format!(
                "upload Location points to another host ({}); refusing to send credentials or data there",
                url.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }

    /// `scheme://host` of the registry. An `insecure` registry is tried over HTTPS (without
    /// certificate checks) first and over plain HTTP when TLS fails, as image-syncer did.
    async fn base(&self, step: &str) -> Result<&str, RegistryError> {
        self.base
            .get_or_try_init(|| async {
                let https = format!("https://{}", self.api_host);
                match self.endpoint.transport {
                    Transport::PlainHttp => return Ok(format!("http://{}", self.api_host)),
                    Transport::Insecure => {}
                    Transport::Verified | Transport::SkipVerify => return Ok(https),
                }
                match self.http.get(format!("{https}/v2/")).send().await {
                    Ok(resp) => {
                        self.learn_challenge(resp.headers()).await;
                        Ok(https)
                    }
                    Err(e) if e.is_connect() || e.is_request() => {
                        Ok(format!("http://{}", self.api_host))
                    }
                    Err(e) => Err(self.network_error(step, &e)),
                }
            })
            .await
            .map(String::as_str)
    }

    /// Sends a request built by `build`; on a 401 with a challenge it authenticates once and
    /// sends it again. Statuses are left to the caller.
    async fn send<F>(
        &self,
        step: &str,
        access: Access<'_>,
        build: F,
    ) -> Result<Response, RegistryError>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        let base = self.base(step).await?;
        // One retry to answer a challenge, one more after asking the login's source again.
        let (mut challenged, mut refreshed) = (false, false);
        loop {
            let (request, used) = self
                .authorize(build(&self.http, base), access, step)
                .await?;
            self.limiter.ready().await;
            let resp = request
                .send()
                .await
                .map_err(|e| self.network_error(step, &e))?;
            // Docker Hub announces its pull quota on GET and HEAD answers alike; any
            // registry that sends these headers is held to them.
            let headers = resp.headers();
            if let Some(quota) = Quota::from_headers(
                header_str(headers, "ratelimit-limit").as_deref(),
                header_str(headers, "ratelimit-remaining").as_deref(),
            ) {
                self.limiter.record_quota(quota);
            }
            let status = resp.status();
            // ECR refuses an expired login with 403 and says so in the body; other 403s
            // are plain "no permission" and go back to the caller unchanged.
            let (resp, expired) = if status == StatusCode::FORBIDDEN {
                self.peek_expired(resp, step).await?
            } else {
                (resp, false)
            };
            if status != StatusCode::UNAUTHORIZED && !expired {
                return Ok(resp);
            }
            // Judge by the challenge this request was sent under: a concurrent request
            // may have learnt the registry's challenge in the meantime.
            let learnt = self.learn_challenge(resp.headers()).await;
            if !expired && learnt == Challenge::None {
                return Ok(resp);
            }
            let refused_login = expired || (used == Challenge::Basic && learnt == Challenge::Basic);
            if !refused_login {
                // A first challenge, or a bearer token that ran out: fetch a fresh token
                // (the realm says whether the login itself still holds).
                if challenged {
                    return Ok(resp);
                }
                challenged = true;
                if matches!(used, Challenge::Bearer { .. }) {
                    tracing::info!(
                        registry = self.registry(),
                        "registry refused the access token (expired); fetching a new one"
                    );
                }
                self.tokens.forget(&access.key()).await;
                continue;
            }
            if refreshed || !self.endpoint.credentials.refreshable() {
                return Ok(resp);
            }
            refreshed = true;
            self.tokens.forget(&access.key()).await;
            // The login itself was refused: ask its source again, once.
            tracing::info!(
                registry = self.registry(),
                source = %self.endpoint.credentials.describe(),
                status = status.as_u16(),
                "registry refused the login; asking its source again"
            );
            self.endpoint.credentials.invalidate().await;
        }
    }

    /// Reads a 403's body to see whether it says the token expired, and gives back an
    /// equivalent answer for the caller.
    async fn peek_expired(
        &self,
        resp: Response,
        step: &str,
    ) -> Result<(Response, bool), RegistryError> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = self.read_capped(resp, MAX_ERROR_BYTES, step).await?;
        let expired = says_token_expired(&body);
        let mut rebuilt = http::Response::new(body);
        *rebuilt.status_mut() = status;
        *rebuilt.headers_mut() = headers;
        Ok((Response::from(rebuilt), expired))
    }

    /// Records the challenge of an answer, if it carries one; returns the current one.
    async fn learn_challenge(&self, headers: &HeaderMap) -> Challenge {
        let mut current = self.challenge.write().await;
        if let Some(value) = header_str(headers, "www-authenticate") {
            let parsed = Challenge::parse(&value);
            if parsed != Challenge::None {
                *current = parsed;
            }
        }
        current.clone()
    }

    /// Adds the `Authorization` header the registry's challenge asks for.
    async fn authorize(
        &self,
        request: RequestBuilder,
        access: Access<'_>,
        step: &str,
    ) -> Result<(RequestBuilder, Challenge), RegistryError> {
        let challenge = self.challenge.read().await.clone();
        let request = match &challenge {
            Challenge::None => request,
            Challenge::Basic => match self.login(step).await? {
                Login::Basic { username, password } => {
                    request.basic_auth(username, Some(password.expose()))
                }
                Login::RegistryToken(t) => {
                    request.header(AUTHORIZATION, format!("Bearer {}", t.expose()))
                }
                Login::Anonymous | Login::IdentityToken(_) => request,
            },
            Challenge::Bearer { realm, service } => {
                let scope = access.key();
                let token = match self.tokens.get(&scope).await {
                    Some(t) => t.value,
                    None => match self
                        .bearer_token(realm, service.as_deref(), &access, step)
                        .await?
                    {
                        Some(t) => {
                            self.tokens.put(&scope, t.clone()).await;
                            t.value
                        }
                        None => return Ok((request, challenge)),
                    },
                };
                request.header(AUTHORIZATION, format!("Bearer {}", token.expose()))
            }
        };
        Ok((request, challenge))
    }

    /// A bearer token for `access`: a registry token as it is, else one from the realm.
    /// When the realm refuses a login that came from a helper or a file, the source is
    /// asked again once. `None` for a registry token (sent as is, never cached here).
    async fn bearer_token(
        &self,
        realm: &str,
        service: Option<&str>,
        access: &Access<'_>,
        step: &str,
    ) -> Result<Option<super::auth::Token>, RegistryError> {
        let mut asked_again = false;
        loop {
            let login = self.login(step).await?;
            if let Login::RegistryToken(t) = &login {
                return Ok(Some(super::auth::Token::fixed(t.clone())));
            }
            match self.fetch_token(realm, service, access, &login, step).await {
                Err(RealmError::Refused(_))
                    if !asked_again && self.endpoint.credentials.refreshable() =>
                {
                    asked_again = true;
                    self.endpoint.credentials.invalidate().await;
                }
                Err(RealmError::Refused(e) | RealmError::Other(e)) => return Err(e),
                Ok(token) => return Ok(Some(token)),
            }
        }
    }

    /// Asks the token realm for a bearer token covering `access` with `login`: a GET with
    /// Basic for a user and password, an OAuth2 refresh-token POST for an identity token.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        access: &Access<'_>,
        login: &Login,
        step: &str,
    ) -> Result<super::auth::Token, RealmError> {
        let auth_error = |cause: String| RegistryError::Auth {
            registry: self.registry().to_owned(),
            step: step.to_owned(),
            cause,
        };
        let realm_url = reqwest::Url::parse(realm)
            .map_err(|e| auth_error(format!("token realm {realm:?} is not a URL: {e}")))?;
        if let Err(why) = self.check_realm(&realm_url) {
            return Err(auth_error(format!("token realm {realm:?} refused: {why}")).into());
        }
        let request = match login {
            Login::IdentityToken(refresh) => {
                // Docker's OAuth2 flow (distribution docs/spec/auth/oauth.md).
                let mut form: Vec<(&str, String)> = vec![
                    ("grant_type", "refresh_token".into()),
                    ("refresh_token", refresh.expose().to_owned()),
                    ("client_id", CLIENT_ID.into()),
                    ("scope", access.scopes().join(" ")),
                ];
                if let Some(service) = service {
                    form.push(("service", service.to_owned()));
                }
                self.http.post(realm_url).form(&form)
            }
            _ => {
                let mut query: Vec<(&str, String)> =
                    access.scopes().into_iter().map(|s| ("scope", s)).collect();
                if let Some(service) = service {
                    query.push(("service", service.to_owned()));
                }
                let mut request = self.http.get(realm_url);
                if let Login::Basic { username, password } = login {
                    query.push(("account", username.clone()));
                    request = request.basic_auth(username, Some(password.expose()));
                }
                request.query(&query)
            }
        };
        let realm_host = match realm_url_host_port(realm) {
            Some(h) => h,
            None => realm.to_owned(),
        };
        let endpoint_error = |cause: String, transient: bool| {
            RealmError::Other(RegistryError::TokenEndpoint {
                registry: self.registry().to_owned(),
                step: step.to_owned(),
                realm: realm_host.clone(),
                cause,
                transient,
            })
        };
        let resp = request
            .send()
            .await
            .map_err(|e| endpoint_error(describe_transport_error(&e), true))?;
        let status = resp.status();
        let body = match self.read_capped(resp, MAX_TOKEN_BYTES, step).await {
            Ok(body) => body,
            Err(RegistryError::Network { cause, .. }) => return Err(endpoint_error(cause, true)),
            Err(RegistryError::Protocol { cause, .. }) => return Err(endpoint_error(cause, false)),
            Err(other) => return Err(other.into()),
        };
        let detail = media::error_detail(&body);
        match status.as_u16() {
            200..=299 => {}
            // Refused credentials: the operator's to fix, not a fault of the endpoint.
            401 | 403 => {
                return Err(RealmError::Refused(auth_error(format!(
                    "token endpoint {realm_host} answered HTTP {}{detail}",
                    status.as_u16()
                ))))
            }
            code => {
                let transient = matches!(code, 408 | 429) || status.is_server_error();
                return Err(endpoint_error(format!("HTTP {code}{detail}"), transient));
            }
        }
        serde_json::from_slice::<TokenAnswer>(&body)
            .ok()
            .and_then(TokenAnswer::into_token)
            .ok_or_else(|| {
                endpoint_error(
                    "the answer is not JSON holding a token or access_token".into(),
                    false,
                )
            })
    }

    /// A token realm is a URL the registry chooses; credentials go there only when it is
    /// safe: http(s), HTTPS unless the registry itself is reached in clear, and no private,
    /// loopback or link-local address other than the registry's own host.
    fn check_realm(&self, realm: &reqwest::Url) -> Result<(), String> {
        let clear_text_registry = matches!(
            self.endpoint.transport,
            Transport::PlainHttp | Transport::Insecure
        );
        match realm.scheme() {
            "https" => {}
            "http" if clear_text_registry || self.endpoint.credentials.is_anonymous() => {}
            "http" => return Err("it is plain http while the registry uses https".into()),
            other => return Err(format!("scheme {other} is not http(s)")),
        }
        let registry_host = host_without_port(&self.api_host);
        let realm_host = realm
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']']);
        let internal = realm_host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| is_internal(&ip));
        // Host only, not port: token servers often run beside their registry at another
        // port, and only this registry's own credentials go there (doc/design.md).
        if internal && !realm_host.eq_ignore_ascii_case(registry_host) {
            return Err(format!(
                "{realm_host} is an internal address and not the registry's own host"
            ));
        }
        Ok(())
    }

    /// Passes an answer with an expected status; turns any other into an error.
    async fn expect(
        &self,
        resp: Response,
        step: &str,
        ok: &[StatusCode],
    ) -> Result<Response, RegistryError> {
        if ok.contains(&resp.status()) {
            Ok(resp)
        } else {
            Err(self.status_error(resp, step).await)
        }
    }

    /// An error for an unexpected status, with the registry's own error code if it sent one.
    async fn status_error(&self, resp: Response, step: &str) -> RegistryError {
        let status = resp.status().as_u16();
        let mut retry_after = header_str(resp.headers(), "retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status == 429 && retry_after.is_none() {
            // Docker Hub's 429 names no Retry-After; its quota headers say how soon a
            // pull comes back (the window shared by the limit).
            retry_after = Quota::from_headers(
                header_str(resp.headers(), "ratelimit-limit").as_deref(),
                header_str(resp.headers(), "ratelimit-remaining").as_deref(),
            )
            .map(|q| q.refill());
        }
        if status == 429 {
            self.limiter.throttled(retry_after);
        }
        let body = self
            .read_capped(resp, MAX_ERROR_BYTES, step)
            .await
            .unwrap_or_default();
        RegistryError::Status {
            registry: self.registry().to_owned(),
            step: step.to_owned(),
            status,
            code: media::error_code(&body),
            detail: media::error_detail(&body),
            retry_after,
        }
    }

    /// Reads a body up to `cap` bytes; more is an error, not an allocation.
    async fn read_capped(
        &self,
        mut resp: Response,
        cap: usize,
        step: &str,
    ) -> Result<bytes::Bytes, RegistryError> {
        let too_large = || {
            self.protocol(
                step,
                format!("answer is larger than the {} KiB limit", cap >> 10),
            )
        };
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.network_error(step, &e))?
        {
            if out.len() + chunk.len() > cap {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    fn protocol(&self, step: &str, cause: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry().to_owned(),
            step: step.to_owned(),
            cause,
        }
    }

    fn network_error(&self, step: &str, err: &reqwest::Error) -> RegistryError {
        if let Some(cause) = certificate_problem(err) {
            return RegistryError::Certificate {
                registry: self.registry().to_owned(),
                step: step.to_owned(),
                cause,
            };
        }
        RegistryError::Network {
            registry: self.registry().to_owned(),
            step: step.to_owned(),
            cause: describe_transport_error(err),
        }
    }
}

/// Why a token request failed: the realm refused the login (worth asking its source
/// again), or anything else.
enum RealmError {
    Refused(RegistryError),
    Other(RegistryError),
}

impl From<RegistryError> for RealmError {
    fn from(e: RegistryError) -> Self {
        RealmError::Other(e)
    }
}

/// `host[:port]` of a realm URL, for error messages.
fn realm_url_host_port(realm: &str) -> Option<String> {
    let url = reqwest::Url::parse(realm).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// The request path of a manifest by tag or digest.
fn manifest_path(repository: &str, reference: &str) -> String {
    format!("/v2/{repository}/manifests/{reference}")
}

/// An HTTP client for `endpoint`'s transport; `verified` is the TLS set-up of a
/// verified transport; `read_timeout` limits each wait for data.
fn http_client(
    endpoint: &Endpoint,
    verified: Option<rustls::ClientConfig>,
    read_timeout: Option<Duration>,
) -> Result<reqwest::Client, RegistryError> {
    let setup_error = |cause: String| RegistryError::Protocol {
        registry: endpoint.registry.clone(),
        step: "setting up the connection".into(),
        cause,
    };
    let mut builder = reqwest::Client::builder()
        .redirect(redirect_policy())
        .connect_timeout(endpoint.timeouts.connect)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(crate::registry::USER_AGENT);
    if let Some(limit) = read_timeout {
        builder = builder.read_timeout(limit);
    }
    match &endpoint.transport {
        Transport::Verified => {
            // Our own rustls set-up, for the verifier that accepts a registry's own
            // certificate given as an anchor (see trust.rs and doc/design.md).
            let config = verified.ok_or_else(|| setup_error("no TLS set-up".into()))?;
            builder = builder.tls_backend_preconfigured(config);
        }
        Transport::PlainHttp => {}
        Transport::SkipVerify | Transport::Insecure => {
            builder = builder.danger_accept_invalid_certs(true);
            if let Some(pair) = &endpoint.tls.client {
                builder = builder.identity(tls::identity(pair).map_err(setup_error)?);
            }
        }
    }
    builder.build().map_err(|e| setup_error(e.to_string()))
}

/// Redirects are followed (blob GETs often go to object storage), at most five, never to
/// an internal address the registry did not start on; reqwest itself drops
/// `Authorization` when a redirect changes host.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first_host = attempt
            .previous()
            .first()
            .and_then(|u| u.host_str())
            .unwrap_or_default()
            .to_owned();
        let host = attempt.url().host_str().unwrap_or_default().to_owned();
        let internal = host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| is_internal(&ip));
        if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else if internal && !host.eq_ignore_ascii_case(&first_host) {
            attempt.error(format!("redirect to internal address {host} refused"))
        } else {
            attempt.follow()
        }
    })
}

/// The host of `host[:port]`, an IPv6 literal without its brackets.
fn host_without_port(host_port: &str) -> &str {
    crate::config::names::split_host_port(host_port).0
}

/// Loopback, private, link-local, unspecified and other non-public addresses.
pub(crate) fn is_internal(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // carrier-grade NAT
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(&v4.into()))
        }
    }
}

/// The target of a `Link` header's `rel="next"` entry.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().trim_start_matches("rel=").trim_matches('"') == "next");
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_internal_addresses() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "100.64.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(&internal.parse().unwrap()), "{internal}");
        }
        for public in ["8.8.8.8", "2001:4860::8888", "100.128.0.1"] {
            assert!(!is_internal(&public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn realm_policy_protects_credentials() {
        let client = |registry: &str, transport: Transport, creds: bool| {
            RegistryClient::new(
                Endpoint {
                    registry: registry.into(),
                    credentials: Arc::new(if creds {
                        CredentialProvider::fixed(
                            Login::Basic {
                                username: "u".into(),
                                password: crate::secret::Secret::new("p"),
                            },
                            "test",
                        )
                    } else {
                        CredentialProvider::anonymous()
                    }),
                    transport,
                    tls: TlsFiles::default(),
                    timeouts: Timeouts::default(),
                    pull_floor: 0,
                },
                Arc::default(),
            )
            .unwrap()
        };
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let verified = Transport::Verified;
        let public = client("reg.example.com", verified.clone(), true);
        assert!(public
            .check_realm(&url("https://auth.example.com/token"))
            .is_ok());
        assert!(public
            .check_realm(&url("http://auth.example.com/token"))
            .is_err());
        assert!(public
            .check_realm(&url("https://169.254.169.254/token"))
            .is_err());
        assert!(public.check_realm(&url("https://10.0.0.5/token")).is_err());
        assert!(public.check_realm(&url("file:///etc/passwd")).is_err());
        let local = client("127.0.0.1:5000", Transport::PlainHttp, true);
        assert!(local
            .check_realm(&url("http://127.0.0.1:5001/token"))
            .is_ok());
        assert!(local.check_realm(&url("http://10.0.0.5/token")).is_err());
        let anonymous = client("reg.example.com", verified, false);
        assert!(anonymous
            .check_realm(&url("http://auth.example.com/token"))
            .is_ok());
    }

    #[test]
    fn finds_next_link() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=1000>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=1000")
        );
        assert_eq!(next_link(r#"<https://h/p>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }
}
