//! Mirrors: repositories kept in step with another. Each mirror of `rsyncserver.mirrors`
//! runs on its schedule (`every` or `cron`), by hand, and for pushes announced at the
//! events endpoints; every run is an ordinary job of user `mirror:<name>` with its
//! trigger. Runs of one mirror never overlap. Nothing here knows HTTP.

pub mod events;
pub mod filters;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Mutex;

use self::events::{Announced, Push};
use self::filters::TagFilter;
use crate::config::{MirrorConfig, Schedule};
use crate::engine::rules::{RuleSide, Selector};
use crate::engine::SyncRequest;
use crate::jobs::{Hold, JobFilter, JobManager, JobRecord, JobState, NewJob, SubmitError, Trigger};

/// The user a mirror's jobs run as.
pub fn mirror_user(name: &str) -> String {
    format!("mirror:{name}")
}

/// The job of one mirror run: `source` to every target of the mirror, as its own user.
fn mirror_job(name: &str, mirror: &Mirror, source: String, trigger: Trigger) -> NewJob {
    let targets = mirror.config.target.to_vec();
    let target = if targets.len() == 1 {
        serde_json::json!(targets[0])
    } else {
        serde_json::json!(targets)
    };
    NewJob {
        user: mirror_user(name),
        trigger,
        rsync_config: serde_json::json!({ "source": source, "target": target, "mirror": name }),
        request: SyncRequest {
            source,
            targets,
            force: false,
            platforms: mirror.config.platforms.clone(),
            referrers: None,
        },
        asynchronous: true,
        callback_url: None,
        max_wait: None,
    }
}

/// Why a mirror run did not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No mirror of that name.
    #[error("no mirror named {0:?} in rsyncserver.mirrors")]
    NotFound(String),
    /// A run of the mirror has not ended yet; runs never overlap.
    #[error("mirror {name}: job {job} is still {state}; runs of one mirror never overlap")]
    Running {
        /// The mirror.
        name: String,
        /// The unfinished job.
        job: i64,
        /// Its state.
        state: &'static str,
    },
    /// The source's tags could not be listed.
    #[error("mirror {name}: listing the source's tags failed: {cause}")]
    Tags {
        /// The mirror.
        name: String,
        /// Why.
        cause: String,
    },
    /// No tag of the source passes the mirror's filters.
    #[error("mirror {0}: no tag of the source passes the tag filters; nothing to copy")]
    NoTags(String),
    /// The job could not be created.
    #[error("mirror {name}: {source}")]
    Submit {
        /// The mirror.
        name: String,
        /// Why.
        source: SubmitError,
    },
}

/// One configured mirror, parsed.
struct Mirror {
    config: MirrorConfig,
    schedule: Option<Schedule>,
    source: RuleSide,
    filter: TagFilter,
    /// Held while deciding whether to start a run, so two triggers cannot both start one.
    gate: Mutex<MirrorState>,
}

#[derive(Default)]
struct MirrorState {
    /// The newest job of this mirror, if any.
    last_job: Option<i64>,
    /// When the schedule runs it next.
    next_run: Option<DateTime<Utc>>,
    /// Push jobs by tag: while one is still queued, more pushes of its tag join it.
    pending: HashMap<String, PendingPush>,
}

/// A push job not yet started and when it may start (pushed back by each push joining it).
struct PendingPush {
    job: i64,
    settle_until: tokio::sync::watch::Sender<tokio::time::Instant>,
}

/// Event ids already acted on, so a registry's resend of an accepted envelope (it resends
/// whenever our 2xx got lost) adds nothing. Bounded: the oldest are forgotten first.
#[derive(Default)]
struct SeenIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

/// Event ids remembered; a registry resends within seconds, so this is plenty.
const SEEN_IDS: usize = 10_000;

impl SeenIds {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            while self.order.len() > SEEN_IDS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// What became of one announced event (one entry per mirror it concerned).
#[derive(Debug, Clone, Serialize)]
pub struct EventOutcome {
    /// The event's id.
    pub id: String,
    /// `queued` (a new job), `joined` (a job still queued for the tag), `duplicate`
    /// (this id was acted on already) or `ignored`.
    pub result: &'static str,
    /// The mirror, for `queued` and `joined`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// The tag pushed, for pushes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The job, for `queued` and `joined`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
    /// Why it was ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl EventOutcome {
    fn ignored(id: &str, tag: Option<&str>, reason: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            result: "ignored",
            mirror: None,
            tag: tag.map(str::to_owned),
            job: None,
            reason: Some(reason.into()),
        }
    }
}

/// A mirror as `GET /v1/mirrors` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorStatus {
    /// The mirror's name.
    pub name: String,
    /// Source rule.
    pub source: String,
    /// Target rules.
    pub targets: Vec<String>,
    /// The interval, if it has one.
    pub every: Option<String>,
    /// The cron expression, if it has one.
    pub cron: Option<String>,
    /// Whether pushes trigger it.
    pub on_push: bool,
    /// Its tag filters.
    pub tags: TagsView,
    /// Its platform filter.
    pub platforms: Vec<String>,
    /// The user its jobs run as.
    pub user: String,
    /// Its newest job.
    pub last_job: Option<LastJob>,
    /// When its schedule runs it next; `null` without a schedule.
    pub next_run: Option<DateTime<Utc>>,
}

/// A mirror's tag filters as shown.
#[derive(Debug, Clone, Serialize)]
pub struct TagsView {
    /// Semver range.
    pub semver: Option<String>,
    /// Allow regexes.
    pub allow: Vec<String>,
    /// Deny regexes.
    pub deny: Vec<String>,
    /// Newest N kept.
    pub keep_latest: Option<usize>,
}

/// The newest job of a mirror.
#[derive(Debug, Clone, Serialize)]
pub struct LastJob {
    /// Job id.
    pub id: i64,
    /// Its state.
    pub state: JobState,
    /// What started it.
    pub trigger: Trigger,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Every configured mirror; cheap to clone.
#[derive(Clone)]
pub struct Mirrors {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: JobManager,
    mirrors: Vec<Arc<Mirror>>,
    /// How long a push job waits for more pushes of its tag.
    settle: Duration,
    seen: std::sync::Mutex<SeenIds>,
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrors")
            .field("count", &self.inner.mirrors.len())
            .finish_non_exhaustive()
    }
}

impl Mirrors {
    /// Parses the configured mirrors (config loading checked them; a bad hand-built entry
    /// is logged and left out).
    /// `settle` is how long a push job waits for more pushes of its tag before it starts.
    pub fn new(configs: &[MirrorConfig], jobs: JobManager, settle: Duration) -> Self {
        let mut mirrors = Vec::new();
        for config in configs {
            let parsed = (|| {
                let schedule = config.schedule()?;
                let source = RuleSide::parse(&config.source).map_err(|e| e.to_string())?;
                let filter = TagFilter::new(&config.tags)?;
                Ok::<_, String>((schedule, source, filter))
            })();
            match parsed {
                Ok((schedule, source, filter)) => mirrors.push(Arc::new(Mirror {
                    config: config.clone(),
                    schedule,
                    source,
                    filter,
                    gate: Mutex::default(),
                })),
                Err(e) => tracing::error!(mirror = %config.name, "mirror left out: {e}"),
            }
        }
        Self {
            inner: Arc::new(Inner {
                jobs,
                mirrors,
                settle,
                seen: std::sync::Mutex::default(),
            }),
        }
    }

    /// Whether any mirror is configured.
    pub fn is_empty(&self) -> bool {
        self.inner.mirrors.is_empty()
    }

    fn find(&self, name: &str) -> Result<&Arc<Mirror>, RunError> {
        self.inner
            .mirrors
            .iter()
            .find(|m| m.config.name == name)
            .ok_or_else(|| RunError::NotFound(name.to_owned()))
    }

    /// Reads each mirror's newest job from the store and starts one scheduler task per
    /// scheduled mirror. A mirror whose run came due while the service was down (or that
    /// never ran) runs once at once.
    pub async fn start(&self) {
        for mirror in &self.inner.mirrors {
            let last = self
                .inner
                .jobs
                .list(JobFilter {
                    user: Some(mirror_user(&mirror.config.name)),
                    limit: 1,
                    ..JobFilter::default()
                })
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(mirror = %mirror.config.name, error = %e, "cannot read the mirror's last job");
                    Vec::new()
                })
                .into_iter()
                .next();
            mirror.gate.lock().await.last_job = last.as_ref().map(|j| j.id);
            let Some(schedule) = &mirror.schedule else {
                continue;
            };
            let now = Utc::now();
            let first = match &last {
                None => now,
                Some(job) => next_after(schedule, job.created_at).max(now),
            };
            if first <= now {
                tracing::info!(mirror = %mirror.config.name, "mirror run overdue (or never ran): running it now");
            }
            let this = self.clone();
            let mirror = mirror.clone();
            tokio::spawn(async move { this.schedule_loop(mirror, first).await });
        }
    }

    async fn schedule_loop(self, mirror: Arc<Mirror>, mut due: DateTime<Utc>) {
        let Some(schedule) = &mirror.schedule else {
            return;
        };
        loop {
            mirror.gate.lock().await.next_run = Some(due);
            let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            match self.start_run(&mirror, Trigger::Schedule, None).await {
                Ok(job) => {
                    tracing::info!(mirror = %mirror.config.name, job = job.id, "scheduled mirror run queued")
                }
                Err(RunError::Submit {
                    source: SubmitError::ShuttingDown,
                    ..
                }) => return,
                Err(e @ RunError::Running { .. }) => {
                    tracing::info!(mirror = %mirror.config.name, "scheduled run skipped: {e}")
                }
                Err(e) => {
                    tracing::warn!(mirror = %mirror.config.name, "scheduled run not started: {e}")
                }
            }
            due = next_after(schedule, due).max(Utc::now());
        }
    }

    /// Starts a run of mirror `name` now (an admin's "run now").
    pub async fn run_now(&self, name: &str) -> Result<JobRecord, RunError> {
        let mirror = self.find(name)?.clone();
        self.start_run(&mirror, Trigger::Manual, None).await
    }

    /// Every mirror with its newest job and next scheduled run.
    pub async fn list(&self) -> Vec<MirrorStatus> {
        let mut out = Vec::new();
        for mirror in &self.inner.mirrors {
            let (last_id, next_run) = {
                let state = mirror.gate.lock().await;
                (state.last_job, state.next_run)
            };
            let last_job = match last_id {
                Some(id) => self
                    .inner
                    .jobs
                    .get(id)
                    .await
                    .ok()
                    .flatten()
                    .map(|j| LastJob {
                        id: j.id,
                        state: j.state,
                        trigger: j.trigger,
                        created_at: j.created_at,
                        finished_at: j.finished_at,
                    }),
                None => None,
            };
            let c = &mirror.config;
            out.push(MirrorStatus {
                name: c.name.clone(),
                source: c.source.clone(),
                targets: c.target.to_vec(),
                every: c.every.clone(),
                cron: c.cron.clone(),
                on_push: c.on_push,
                tags: TagsView {
                    semver: c.tags.semver.clone(),
                    allow: c.tags.allow.clone(),
                    deny: c.tags.deny.clone(),
                    keep_latest: c.tags.keep_latest,
                },
                platforms: c.platforms.clone(),
                user: mirror_user(&c.name),
                last_job,
                next_run: if mirror.schedule.is_some() {
                    next_run
                } else {
                    None
                },
            });
        }
        out
    }

    /// Starts one run: the whole filtered tag list, or (`pushed`) one tag. A run never
    /// starts while another of the same mirror has not ended.
    async fn start_run(
        &self,
        mirror: &Mirror,
        trigger: Trigger,
        pushed: Option<&str>,
    ) -> Result<JobRecord, RunError> {
        let name = &mirror.config.name;
        let mut state = mirror.gate.lock().await;
        if let Some(id) = state.last_job {
            if let Ok(Some(job)) = self.inner.jobs.get(id).await {
                if !job.state.is_final() {
                    return Err(RunError::Running {
                        name: name.clone(),
                        job: id,
                        state: job.state.as_str(),
                    });
                }
            }
        }
        let source = self.source_rule(mirror, pushed).await?;
        let new = mirror_job(name, mirror, source, trigger);
        let submitted = self
            .inner
            .jobs
            .submit(new)
            .await
            .map_err(|source| RunError::Submit {
                name: name.clone(),
                source,
            })?;
        state.last_job = Some(submitted.job.id);
        Ok(submitted.job)
    }

    /// The source rule of one run: the configured rule when no filter applies, else the
    /// filtered tag list (or the one pushed tag).
    async fn source_rule(&self, mirror: &Mirror, pushed: Option<&str>) -> Result<String, RunError> {
        let name = &mirror.config.name;
        let repo = mirror.source.image.name();
        if let Some(tag) = pushed {
            return Ok(format!("{repo}:{tag}"));
        }
        if !mirror.filter.is_set() {
            return Ok(mirror.config.source.clone());
        }
        let listed = self
            .inner
            .jobs
            .engine()
            .source_tags(&mirror.config.source)
            .await
            .map_err(|e| RunError::Tags {
                name: name.clone(),
                cause: e.to_string(),
            })?;
        let Some(tags) = listed else {
            // A digest: no tag to filter.
            return Ok(mirror.config.source.clone());
        };
        let kept = mirror.filter.apply(tags);
        if kept.is_empty() {
            return Err(RunError::NoTags(name.clone()));
        }
        Ok(format!("{repo}:{}", kept.join(",")))
    }
}

impl Mirrors {
    /// Acts on the events of one envelope: each tagged push to the source of a mirror
    /// with `on_push: true`, whose tag the mirror's rule and tag filters select, queues a
    /// copy of that tag (or joins the one still queued for it). Returns once the jobs are
    /// stored. Everything else is ignored with a debug line. An error (a tag listing for
    /// `keep_latest`, the job store) fails the envelope so that the sender tries again;
    /// events acted on before it are recognised then as duplicates.
    pub async fn on_push(&self, announced: Vec<Announced>) -> Result<Vec<EventOutcome>, RunError> {
        let mut out = Vec::new();
        for event in announced {
            let push = match event {
                Announced::Ignored { id, action, why } => {
                    tracing::debug!(event = %id, action = %action, "event ignored: {why}");
                    out.push(EventOutcome::ignored(&id, None, why));
                    continue;
                }
                Announced::Push(push) => push,
            };
            if self.seen().contains(&push.id) {
                tracing::debug!(event = %push.id, "event ignored: already acted on (a resend)");
                out.push(EventOutcome {
                    result: "duplicate",
                    ..EventOutcome::ignored(
                        &push.id,
                        Some(&push.tag),
                        "this event id was acted on already",
                    )
                });
                continue;
            }
            let outcomes = self.on_one_push(&push).await?;
            self.seen().insert(&push.id);
            out.extend(outcomes);
        }
        Ok(out)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, SeenIds> {
        self.inner.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn on_one_push(&self, push: &Push) -> Result<Vec<EventOutcome>, RunError> {
        let ignored = |why: String| {
            tracing::debug!(event = %push.id, host = %push.host, repository = %push.repository, tag = %push.tag, "push ignored: {why}");
            Ok(vec![EventOutcome::ignored(&push.id, Some(&push.tag), why)])
        };
        if let Some(agent) = push
            .user_agent
            .as_deref()
            .filter(|a| a.starts_with("imagersync/"))
        {
            return ignored(format!(
                "pushed by imagersync itself ({agent}); its own writes never trigger a run"
            ));
        }
        let concerned: Vec<&Arc<Mirror>> = self
            .inner
            .mirrors
            .iter()
            .filter(|m| {
                m.config.on_push
                    && m.source.image.registry == push.host
                    && m.source.image.repository == push.repository
            })
            .collect();
        if concerned.is_empty() {
            return ignored(format!(
                "no mirror with on_push: true has {}/{} as its source",
                push.host, push.repository
            ));
        }
        let mut out = Vec::new();
        for mirror in concerned {
            let name = &mirror.config.name;
            if let Some(why) = self.refuses_tag(mirror, &push.tag).await? {
                tracing::debug!(event = %push.id, mirror = %name, tag = %push.tag, "push ignored: {why}");
                out.push(EventOutcome::ignored(&push.id, Some(&push.tag), why));
                continue;
            }
            let (job, joined) = self.queue_push(mirror, &push.tag).await?;
            tracing::info!(
                event = %push.id,
                mirror = %name,
                tag = %push.tag,
                job,
                "push event {} job {job}",
                if joined { "joined queued" } else { "queued" }
            );
            out.push(EventOutcome {
                id: push.id.clone(),
                result: if joined { "joined" } else { "queued" },
                mirror: Some(name.clone()),
                tag: Some(push.tag.clone()),
                job: Some(job),
                reason: None,
            });
        }
        Ok(out)
    }

    /// Why the mirror does not copy `tag`, if it does not: its source rule names other
    /// tags, or its tag filters drop it (`keep_latest` needs the source's tag list).
    async fn refuses_tag(&self, mirror: &Mirror, tag: &str) -> Result<Option<String>, RunError> {
        let name = &mirror.config.name;
        let selected = match &mirror.source.selector {
            Selector::All => true,
            Selector::Tags(tags) => tags.iter().any(|t| t == tag),
            Selector::Regex(re) => re.is_match(tag),
            Selector::Digest(_) => false,
        };
        if !selected {
            return Ok(Some(format!(
                "mirror {name}: its source rule {} does not select tag {tag}",
                mirror.config.source
            )));
        }
        if !mirror.filter.admits(tag) {
            return Ok(Some(format!(
                "mirror {name}: its tag filters drop tag {tag}"
            )));
        }
        if mirror.filter.needs_listing() {
            let listed = self
                .inner
                .jobs
                .engine()
                .source_tags(&mirror.config.source)
                .await
                .map_err(|e| RunError::Tags {
                    name: name.clone(),
                    cause: e.to_string(),
                })?
                .unwrap_or_default();
            if !mirror.filter.apply(listed).iter().any(|t| t == tag) {
                return Ok(Some(format!(
                    "mirror {name}: tag {tag} is not among the newest keep_latest tags"
                )));
            }
        }
        Ok(None)
    }

    /// Queues a copy of `tag` for `mirror`, or joins the one still queued for it.
    /// Returns the job and whether it was joined. The new job waits for `settle` after
    /// the last push joining it, then for the mirror's previous run to end, so runs of one
    /// mirror never overlap.
    async fn queue_push(&self, mirror: &Mirror, tag: &str) -> Result<(i64, bool), RunError> {
        let name = &mirror.config.name;
        let jobs = &self.inner.jobs;
        let settle = self.inner.settle;
        let mut state = mirror.gate.lock().await;
        if let Some(pending) = state.pending.get(tag) {
            // Joining is safe while the job is queued: it has not read the source yet,
            // so it copies what this push wrote.
            if let Ok(Some(job)) = jobs.get(pending.job).await {
                if job.state == JobState::Queued {
                    pending
                        .settle_until
                        .send_replace(tokio::time::Instant::now() + settle);
                    return Ok((job.id, true));
                }
            }
        }
        let previous = match state.last_job {
            Some(id) => match jobs.get(id).await {
                Ok(Some(job)) if !job.state.is_final() => Some(id),
                _ => None,
            },
            None => None,
        };
        let (settle_until, mut due) =
            tokio::sync::watch::channel(tokio::time::Instant::now() + settle);
        let waiter = jobs.clone();
        let hold: Hold = Box::pin(async move {
            loop {
                let until = *due.borrow_and_update();
                if tokio::time::Instant::now() >= until {
                    break;
                }
                tokio::time::sleep_until(until).await;
            }
            if let Some(previous) = previous {
                wait_ended(&waiter, previous).await;
            }
        });
        let source = format!("{}:{tag}", mirror.source.image.name());
        let new = mirror_job(name, mirror, source, Trigger::Push);
        let submitted =
            jobs.submit_held(new, Some(hold))
                .await
                .map_err(|source| RunError::Submit {
                    name: name.clone(),
                    source,
                })?;
        let id = submitted.job.id;
        state.last_job = Some(id);
        if state.pending.len() >= 256 {
            // Forget push jobs that have started or ended; they can no longer be joined.
            state.pending.retain(|_, p| {
                jobs.watch(p.job)
                    .is_some_and(|w| w.borrow().state == JobState::Queued)
            });
        }
        state.pending.insert(
            tag.to_owned(),
            PendingPush {
                job: id,
                settle_until,
            },
        );
        Ok((id, false))
    }
}

/// Returns once job `id` has ended (at once when it is not live any more).
async fn wait_ended(jobs: &JobManager, id: i64) {
    let Some(mut watch) = jobs.watch(id) else {
        return;
    };
    loop {
        if watch.borrow_and_update().state.is_final() {
            return;
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// The first run time after `after` on `schedule`.
fn next_after(schedule: &Schedule, after: DateTime<Utc>) -> DateTime<Utc> {
    match schedule {
        Schedule::Every(every) => {
            after + chrono::Duration::from_std(*every).unwrap_or(chrono::Duration::MAX)
        }
        Schedule::Cron(cron) => cron
            .find_next_occurrence(&after, false)
            // A pattern with no next time (e.g. 30 February) never runs again.
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    }
}
