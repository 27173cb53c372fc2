//! What travels with an image: its signatures, attestations and SBOMs (OCI referrers).
//!
//! For every manifest an image copy brings over, the referrers are found at the source in
//! three ways: the OCI 1.1 referrers API, else the referrers tag schema (`sha256-<hex>`
//! holding an index), and cosign's `sha256-<hex>.sig|.att|.sbom` tags. Each is copied
//! digest for digest like any manifest, then its own referrers, down to
//! [`MAX_REFERRER_DEPTH`]. At a target that does not answer a manifest PUT with
//! `OCI-Subject`, the subject's `sha256-<hex>` index is merged (read, add what is missing,
//! push back) under a per-subject lock of the service. All of it happens before the
//! image's tag is written, so the tag never appears without its signatures.
//!
//! The registry client only lists and moves manifests; which referrers to copy, where
//! to look and in which order is decided here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::copy::{CopyError, CopyJob};
use super::progress::SyncEvent;
use super::report::ImageResult;
use crate::registry::media::{
    cosign_tags, entry_digest, fallback_tag, index_entries, is_referrer_tag, merge_referrers,
    referrer_info, referrers_index, ReferrerInfo, MANIFEST_ACCEPT, OCI_INDEX_ACCEPT,
};
use crate::registry::Manifest;

/// Referrers of referrers are followed this many levels down from the image's manifests
/// (signature of an SBOM of an image is 2); deeper ones are left, with a log line.
pub const MAX_REFERRER_DEPTH: usize = 4;

/// One lock per (target registry, repository, subject): two syncs of this service that
/// add referrers to the same subject update its fallback index one after the other, so
/// neither overwrites the other's entry (distribution 2.8 has no conditional PUT).
#[derive(Default)]
pub struct SubjectLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SubjectLocks {
    /// Waits for the lock of `key`; held until the guard is dropped.
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().expect("subject locks");
            // Forget locks nobody holds or waits for, so the map stays small.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// What one sync learns of each source repository's referrers, once: an all-tags rule
/// over a repository of N tags would otherwise read its tag list N times and probe the
/// referrers API N times.
#[derive(Default)]
pub struct ReferrerTags {
    /// By `registry/repository`; `None` when the list could not be read.
    known: Mutex<HashMap<String, Option<Arc<HashSet<String>>>>>,
    /// By `registry/repository`: whether it serves the referrers API. Only "no" is kept:
    /// a registry with the API answers 200 for any digest (OCI distribution spec 1.1),
    /// so its 404 holds for every image of the repository.
    no_api: Mutex<HashSet<String>>,
}

impl ReferrerTags {
    /// Remembers the referrer tags among `tags` of `registry/repository`.
    pub fn remember(&self, repository: String, tags: &[String]) {
        let set = tags
            .iter()
            .filter(|t| is_referrer_tag(t))
            .cloned()
            .collect();
        self.known
            .lock()
            .expect("referrer tags")
            .insert(repository, Some(Arc::new(set)));
    }

    fn get(&self, repository: &str) -> Option<Option<Arc<HashSet<String>>>> {
        self.known
            .lock()
            .expect("referrer tags")
            .get(repository)
            .cloned()
    }

    fn put(&self, repository: String, tags: Option<Arc<HashSet<String>>>) {
        self.known
            .lock()
            .expect("referrer tags")
            .insert(repository, tags);
    }

    fn lacks_api(&self, repository: &str) -> bool {
        self.no_api
            .lock()
            .expect("referrers api")
            .contains(repository)
    }

    fn note_no_api(&self, repository: String) {
        self.no_api
            .lock()
            .expect("referrers api")
            .insert(repository);
    }
}

/// A referrer found at the source.
struct Found {
    /// Its manifest, as read from the source.
    manifest: Manifest,
    /// cosign's tag it was found under; pushed under the same tag.
    tag: Option<String>,
    /// The entry of the source's referrers list (API or fallback index); such referrers
    /// are listed in the target's fallback index unless the target keeps the list itself.
    entry: Option<Value>,
}

/// What the walk over one image's referrers has learnt so far.
pub(crate) struct Walk {
    /// Referrer tags of the source repository (fallback and cosign tags), when its tag
    /// list could be read: tags not in it are not asked for.
    source_tags: Option<Arc<HashSet<String>>>,
    /// Whether the source serves the referrers API (learnt on the first subject).
    source_api: Option<bool>,
    /// Whether the target answered `OCI-Subject` (it keeps referrers lists itself).
    target_api: Option<bool>,
    /// Referrer manifests handled already (loops, and one referrer listed twice).
    seen: HashSet<String>,
    /// Blobs and bytes announced to observers so far (the image's own, then referrers').
    planned: (u64, u64),
    /// The referrers API's answer for one subject, read ahead ([`CopyJob::look_ahead`]).
    ahead: Option<Ahead>,
}

/// The referrers API's answer for a subject, read while the image's blobs were copied.
pub(crate) struct Ahead {
    subject: String,
    /// `None`: the source does not serve the API.
    listed: Option<Vec<Value>>,
}

impl Walk {
    /// A walk for an image copy that already announced `planned` blobs and bytes.
    pub fn new(planned: (u64, u64)) -> Self {
        Self {
            source_tags: None,
            source_api: None,
            target_api: None,
            seen: HashSet::new(),
            planned,
            ahead: None,
        }
    }

    /// The same, with what [`CopyJob::look_ahead`] read.
    pub fn with_ahead(mut self, ahead: Option<Ahead>) -> Self {
        self.ahead = ahead;
        self
    }
}

impl CopyJob<'_> {
    /// Copies the referrers of `subjects` (digests already at the target, or about to be
    /// tagged there) and theirs in turn. The first referrer that fails fails the image.
    pub(crate) async fn copy_referrers(
        &self,
        subjects: Vec<String>,
        walk: &mut Walk,
        result: &mut ImageResult,
    ) -> Result<(), CopyError> {
        if !self.referrers {
            return Ok(());
        }
        walk.source_tags = self.list_referrer_tags().await;
        if self.referrer_tags.lacks_api(&self.source.name()) {
            walk.source_api = Some(false);
        }
        let mut queue: VecDeque<(String, usize)> = subjects.into_iter().map(|s| (s, 0)).collect();
        // A manifest found twice (listed and under a cosign tag) is searched once.
        let mut searched = HashSet::new();
        while let Some((subject, depth)) = queue.pop_front() {
            if !searched.insert(subject.clone()) {
                continue;
            }
            let (found, source_index) = self.discover(&subject, walk).await?;
            if found.is_empty() {
                continue;
            }
            if depth >= MAX_REFERRER_DEPTH {
                self.log.warn(format!(
                    "Referrers of {subject} not copied: referrers are followed {MAX_REFERRER_DEPTH} levels deep"
                ));
                continue;
            }
            let mut index_entries = Vec::new();
            for referrer in found {
                let digest = referrer.manifest.digest.clone();
                let listed = self
                    .copy_referrer(&subject, &referrer, walk, result)
                    .await
                    .map_err(|cause| {
                        let info =
                            referrer_info(&referrer.manifest.media_type, &referrer.manifest.bytes);
                        CopyError::Referrer {
                            referrer: digest.clone(),
                            kind: info.kind,
                            subject: subject.clone(),
                            cause: cause.to_string(),
                        }
                    })?;
                if let (true, Some(entry)) = (listed, referrer.entry) {
                    index_entries.push(entry);
                }
                queue.push_back((digest, depth + 1));
            }
            if !index_entries.is_empty() {
                self.merge_fallback_index(&subject, index_entries, source_index, result)
                    .await
                    .map_err(|cause| CopyError::Referrer {
                        referrer: fallback_tag(&subject),
                        kind: "referrers index".into(),
                        subject: subject.clone(),
                        cause: cause.to_string(),
                    })?;
            }
        }
        Ok(())
    }

    /// Reads what the search for the referrers of `subject` (the image's top manifest)
    /// starts with, the source's tag list and the referrers API's answer, while the
    /// image's blobs are still on their way: two round trips off the copy's critical
    /// path. A failure is left for the search itself, which asks again with retries.
    pub(crate) async fn look_ahead(&self, subject: &str) -> Option<Ahead> {
        if !self.referrers {
            return None;
        }
        let api = async {
            if self.referrer_tags.lacks_api(&self.source.name()) {
                return None;
            }
            self.src
                .referrers(&self.source.repository, subject)
                .await
                .ok()
        };
        let (_, listed) = tokio::join!(self.list_referrer_tags(), api);
        Some(Ahead {
            subject: subject.to_owned(),
            listed: listed?,
        })
    }

    /// The source repository's referrer tags, or `None` when its tag list cannot be read
    /// (then each candidate tag is asked for instead). Read once per sync and repository.
    async fn list_referrer_tags(&self) -> Option<Arc<HashSet<String>>> {
        let key = self.source.name();
        if let Some(known) = self.referrer_tags.get(&key) {
            return known;
        }
        let listed = match self.src.tags(&self.source.repository).await {
            Ok(tags) => Some(Arc::new(
                tags.into_iter().filter(|t| is_referrer_tag(t)).collect(),
            )),
            Err(e) => {
                self.log.warn(format!(
                    "Could not list the tags of {} to find referrers, asking for each: {e}",
                    self.source.name()
                ));
                None
            }
        };
        self.referrer_tags.put(key, listed.clone());
        listed
    }

    /// Whether the source may hold `tag`.
    fn may_have_tag(walk: &Walk, tag: &str) -> bool {
        walk.source_tags.as_ref().is_none_or(|t| t.contains(tag))
    }

    /// The referrers of `subject` at the source not handled yet, and the source's
    /// fallback index when that is where they were listed.
    async fn discover(
        &self,
        subject: &str,
        walk: &mut Walk,
    ) -> Result<(Vec<Found>, Option<Manifest>), CopyError> {
        let repo = &self.source.repository;
        let mut entries = None;
        let mut source_index = None;
        if walk.source_api != Some(false) {
            let listed = match walk.ahead.take_if(|a| a.subject == subject) {
                Some(ahead) => ahead.listed,
                None => {
                    self.retry
                        .run(self.log, "listing referrers", || {
                            self.src.referrers(repo, subject)
                        })
                        .await?
                }
            };
            if walk.source_api.is_none() {
                self.log.info(format!(
                    "Source {} {} the OCI referrers API",
                    self.source.name(),
                    if listed.is_some() {
                        "serves"
                    } else {
                        "does not serve"
                    }
                ));
            }
            walk.source_api = Some(listed.is_some());
            if listed.is_none() {
                self.referrer_tags.note_no_api(self.source.name());
            }
            entries = listed;
        }
        if entries.is_none() {
            let tag = fallback_tag(subject);
            if Self::may_have_tag(walk, &tag) {
                let index = self
                    .retry
                    .run(self.log, "reading the referrers tag", || {
                        self.src.manifest_find(repo, &tag, OCI_INDEX_ACCEPT)
                    })
                    .await?;
                // Anything but an OCI index (or a registry that resolves the tag as the
                // subject's own digest) means "no referrers", as the spec says.
                if let Some(index) =
                    index.filter(|m| m.media_type == OCI_INDEX_ACCEPT && m.digest != subject)
                {
                    entries = index_entries(&index.bytes);
                    source_index = entries.is_some().then_some(index);
                }
            }
        }
        let mut found = Vec::new();
        for entry in entries.unwrap_or_default() {
            let digest = entry_digest(&entry).to_owned();
            if digest.is_empty() || !walk.seen.insert(digest.clone()) {
                continue;
            }
            let manifest = self
                .retry
                .run(self.log, "fetching a referrer", || {
                    self.src.manifest_get(repo, &digest)
                })
                .await?;
            found.push(Found {
                manifest,
                tag: None,
                entry: Some(entry),
            });
        }
        for tag in cosign_tags(subject) {
            if !Self::may_have_tag(walk, &tag) {
                continue;
            }
            let manifest = self
                .retry
                .run(self.log, "reading a cosign tag", || {
                    self.src.manifest_find(repo, &tag, MANIFEST_ACCEPT)
                })
                .await?;
            if let Some(manifest) = manifest {
                walk.seen.insert(manifest.digest.clone());
                found.push(Found {
                    manifest,
                    tag: Some(tag),
                    entry: None,
                });
            }
        }
        Ok((found, source_index))
    }

    /// Copies one referrer (blobs, children, then the manifest by digest or under its
    /// cosign tag). Returns whether the target's fallback index must list it: the
    /// target did not answer `OCI-Subject`.
    async fn copy_referrer(
        &self,
        subject: &str,
        referrer: &Found,
        walk: &mut Walk,
        result: &mut ImageResult,
    ) -> Result<bool, CopyError> {
        let manifest = &referrer.manifest;
        let ReferrerInfo { kind, .. } = referrer_info(&manifest.media_type, &manifest.bytes);
        let reference = referrer
            .tag
            .clone()
            .unwrap_or_else(|| manifest.digest.clone());
        let dst_repo = &self.target.repository;
        // Images of one request run at once, and tags sharing a digest share referrers:
        // one copies a referrer while the others wait, then find it there.
        let _turn = self
            .subject_locks
            .lock(format!("{}/{dst_repo}:{reference}", self.dst.registry()))
            .await;
        let at_target = self
            .retry
            .run(self.log, "checking a referrer at the target", || {
                self.dst.manifest_digest(dst_repo, &reference)
            })
            .await?;
        if at_target.is_some_and(|(d, _)| d == manifest.digest) {
            self.log.info(format!(
                "Skip referrer {} ({kind}) of {subject}: {}:{reference} already has it",
                manifest.digest,
                self.target.name()
            ));
            return Ok(walk.target_api != Some(true));
        }
        let plan = self.gather(manifest).await?;
        walk.planned.0 += plan.blobs.len() as u64;
        walk.planned.1 += plan.blobs.iter().map(|b| b.size).sum::<u64>();
        self.observers.emit(&SyncEvent::BlobsPlanned {
            image: self.index,
            blobs: walk.planned.0,
            bytes: walk.planned.1,
        });
        self.copy_blobs(&plan.blobs, false, result).await?;
        self.push_children(&plan.children, result).await?;
        let answered = self.put_manifest(&reference, manifest).await?;
        result.manifests_pushed += 1;
        result.referrers_copied += 1;
        let place = match &referrer.tag {
            Some(tag) => format!("{}:{tag}", self.target.name()),
            None => self.target.name(),
        };
        self.log.info(format!(
            "Put referrer {} ({kind}) of {subject} to {place}",
            manifest.digest
        ));
        self.observers.emit(&SyncEvent::ReferrerCopied {
            image: self.index,
            registry: self.dst.registry(),
        });
        let keeps_list = answered.is_some();
        if keeps_list {
            walk.target_api = Some(true);
        }
        Ok(!keeps_list)
    }

    /// Adds `entries` to the target's fallback index of `subject`, keeping what it
    /// lists, one sync of this service at a time. When the target has no index yet and
    /// the source's lists exactly these entries, the source's bytes are pushed, so the
    /// index keeps its digest too.
    async fn merge_fallback_index(
        &self,
        subject: &str,
        entries: Vec<Value>,
        source_index: Option<Manifest>,
        result: &mut ImageResult,
    ) -> Result<(), CopyError> {
        let dst_repo = &self.target.repository;
        let tag = fallback_tag(subject);
        let key = format!("{}/{dst_repo}@{subject}", self.dst.registry());
        let _turn = self.subject_locks.lock(key).await;
        let existing = self
            .retry
            .run(self.log, "reading the target's referrers tag", || {
                self.dst.manifest_find(dst_repo, &tag, OCI_INDEX_ACCEPT)
            })
            .await?;
        let existing_entries = match &existing {
            None => None,
            Some(m) => match (m.media_type == OCI_INDEX_ACCEPT && m.digest != subject)
                .then(|| index_entries(&m.bytes))
                .flatten()
            {
                Some(list) => Some(list),
                None => {
                    return Err(CopyError::Mismatch(format!(
                        "{}:{tag} holds a {} that is not a referrers index; the spec says to stop rather than overwrite it: remove the tag or let it hold an OCI index",
                        self.target.name(),
                        m.media_type
                    )))
                }
            },
        };
        let same_as_source = |source: &Manifest| {
            index_entries(&source.bytes).is_some_and(|list| {
                list.iter()
                    .map(entry_digest)
                    .eq(entries.iter().map(entry_digest))
            })
        };
        let index = match (existing_entries, source_index) {
            (None, Some(source)) if same_as_source(&source) => source,
            (existing, _) => {
                let existing = existing.unwrap_or_default();
                let Some(merged) = merge_referrers(&existing, &entries) else {
                    self.log.info(format!(
                        "Referrers index {}:{tag} already lists every referrer copied",
                        self.target.name()
                    ));
                    return Ok(());
                };
                let bytes = referrers_index(&merged);
                Manifest {
                    digest: crate::registry::digest::digest_of(&bytes, subject),
                    bytes,
                    media_type: OCI_INDEX_ACCEPT.to_owned(),
                }
            }
        };
        self.put_manifest(&tag, &index).await?;
        result.manifests_pushed += 1;
        let listed = index_entries(&index.bytes).map_or(0, |l| l.len());
        self.log.info(format!(
            "Put referrers index {}:{tag} ({}, {listed} entries) of {subject}",
            self.target.name(),
            index.digest
        ));
        Ok(())
    }
}
