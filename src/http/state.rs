//! What every handler shares: the job manager (and through it the engine), the users,
//! their scopes and admins, the failed-login damping, the home-page links, the
//! recorder of finished syncs and the service's metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use super::auth::UserTable;
use super::recorder::Recorder;
use crate::access::damping::LoginDamping;
use crate::access::scopes::Scopes;
use crate::analysis_log::AnalysisLog;
use crate::config::Config;
use crate::engine::Engine;
use crate::jobs::tracker::SyncTracker;
use crate::jobs::webhook::{CallbackPolicy, WebhookSender};
use crate::jobs::{JobLimits, JobManager, JobStore};
use crate::metrics::{Gauges, Metrics};
use crate::mirrors::Mirrors;

/// Shared state of the router; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: JobManager,
    /// Swapped whole on reload; a request loads it once.
    access: ArcSwap<ServiceAccess>,
    /// `rsyncserver.events.users`: read at start-up only.
    event_users: BTreeSet<String>,
    login_damping: LoginDamping,
    tools: BTreeMap<String, String>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    mirrors: Mirrors,
}

/// Who may call the sync routes and what they may do: the users, their scopes and the
/// admins of one config. Replaced as a whole when the config is reloaded.
pub struct ServiceAccess {
    /// The service users allowed on the sync routes.
    pub users: UserTable,
    /// What each user may sync from and to.
    pub scopes: Scopes,
    /// Users who see and cancel every user's jobs.
    pub admins: BTreeSet<String>,
}

impl ServiceAccess {
    /// The users, scopes and admins of `config`.
    pub fn new(config: &Config) -> Self {
        let server = &config.rsyncserver;
        Self {
            users: UserTable::new(&server.auth),
            scopes: Scopes::new(&server.scopes),
            admins: server.admins.iter().cloned().collect(),
        }
    }
}

/// Written by hand so that nothing secret can ever show: the users appear as a count,
/// the engine (registry credentials) not at all.
impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access = self.access();
        f.debug_struct("AppState")
            .field("users", &access.users)
            .field("scopes", &access.scopes)
            .field("admins", &access.admins)
            .field("jobs", &self.inner.jobs)
            .field("running_syncs", &self.syncs().active())
            .field("analysis_log", &self.analysis_log().path())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state from a loaded config, an engine, an opened analysis log and a
    /// job store. Taking them as arguments lets tests pass their own.
    ///
    /// The engine's service-wide observer becomes the state's [`Metrics`]: wiring it
    /// here, where both meet, means `GET /metrics` always shows what this engine did.
    pub fn new(
        config: &Config,
        engine: Engine,
        analysis_log: AnalysisLog,
        store: Arc<dyn JobStore>,
    ) -> Self {
        let server = &config.rsyncserver;
        let metrics = Arc::new(Metrics::new());
        let engine = engine.with_observer(metrics.clone());
        let recorder = Recorder::new(Arc::new(analysis_log), metrics.clone());
        let jobs = JobManager::new(
            Arc::new(engine),
            store,
            Arc::new(recorder.clone()),
            WebhookSender::new(
                crate::jobs::webhook::FIRST_BACKOFF,
                CallbackPolicy::new(&server.jobs.callback_allowed_hosts),
            ),
            JobLimits {
                // A hand-built config may say 0; one slot at least keeps the service usable.
                max_running: server.max_concurrent_syncs.max(1),
                max_queued: server.jobs.max_queued,
                sync_wait: std::time::Duration::from_secs(server.jobs.sync_wait_seconds),
                lease: std::time::Duration::from_secs(server.jobs.lease_seconds),
            },
        );
        let mirrors = Mirrors::new(
            &server.mirrors,
            jobs.clone(),
            server.events.settle_duration(),
        );
        Self {
            inner: Arc::new(Inner {
                mirrors,
                jobs,
                access: ArcSwap::from_pointee(ServiceAccess::new(config)),
                event_users: server.events.users.iter().cloned().collect(),
                login_damping: LoginDamping::new(&server.login_damping),
                tools: config.config.tools.clone(),
                recorder,
                metrics,
            }),
        }
    }

    /// The service's counters and histograms.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The gauges of `GET /metrics`, read now.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            replica: self.jobs().replica().to_owned(),
            syncs_in_flight: self.syncs().active(),
            jobs_queued: self.jobs().queued(),
            blob_transfers_in_flight: self.engine().transfers_in_flight(),
        }
    }

    /// The sync engine.
    pub fn engine(&self) -> &Engine {
        self.inner.jobs.engine()
    }

    /// The configured mirrors and their schedules.
    pub fn mirrors(&self) -> &Mirrors {
        &self.inner.mirrors
    }

    /// Runs and keeps jobs.
    pub fn jobs(&self) -> &JobManager {
        &self.inner.jobs
    }

    /// The users, scopes and admins in force now. A request takes it once, so it is
    /// checked against one config even while a reload swaps in the next.
    pub fn access(&self) -> Arc<ServiceAccess> {
        self.inner.access.load_full()
    }

    /// Puts the users, scopes and admins of `config` in force for the next request.
    pub fn reload_access(&self, config: &Config) {
        self.inner
            .access
            .store(Arc::new(ServiceAccess::new(config)));
    }

    /// Whether `user` sees and cancels every user's jobs.
    pub fn is_admin(&self, user: &str) -> bool {
        self.inner.access.load().admins.contains(user)
    }

    /// Whether `user` may post push events (`rsyncserver.events.users`).
    pub fn may_post_events(&self, user: &str) -> bool {
        self.inner.event_users.contains(user)
    }

    /// Failed-login tallies per client address.
    pub fn login_damping(&self) -> &LoginDamping {
        &self.inner.login_damping
    }

    /// One permit per sync allowed to run at once (`rsyncserver.max_concurrent_syncs`).
    pub fn sync_slots(&self) -> &Arc<Semaphore> {
        self.inner.jobs.slots()
    }

    /// The configured cap on syncs running at once.
    pub fn max_concurrent_syncs(&self) -> usize {
        self.inner.jobs.limits().max_running
    }

    /// The `config.tools` links shown on the home page.
    pub fn tools(&self) -> &BTreeMap<String, String> {
        &self.inner.tools
    }

    /// Writes finished syncs to the log and the analysis log.
    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    /// Where each sync's JSON line goes.
    pub fn analysis_log(&self) -> &AnalysisLog {
        self.inner.recorder.analysis_log()
    }

    /// Syncs still running; shutdown waits on it.
    pub fn syncs(&self) -> &Arc<SyncTracker> {
        self.inner.jobs.syncs()
    }
}
