//! What every handler shares: the engine, the users and their scopes, the failed-login
//! damping, the sync slots, the home-page links, the analysis log and the running-sync
//! counter.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::auth::UserTable;
use super::damping::LoginDamping;
use super::scopes::Scopes;
use super::tracker::SyncTracker;
use crate::analysis_log::AnalysisLog;
use crate::config::Config;
use crate::engine::Engine;

/// Shared state of the router; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    users: UserTable,
    scopes: Scopes,
    login_damping: LoginDamping,
    sync_slots: Arc<Semaphore>,
    max_concurrent_syncs: usize,
    tools: BTreeMap<String, String>,
    analysis_log: AnalysisLog,
    syncs: Arc<SyncTracker>,
}

/// Written by hand so that nothing secret can ever show: the users appear as a count,
/// the engine (registry credentials) not at all.
impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("users", &self.inner.users)
            .field("scopes", &self.inner.scopes)
            .field("max_concurrent_syncs", &self.inner.max_concurrent_syncs)
            .field("running_syncs", &self.inner.syncs.active())
            .field("analysis_log", &self.inner.analysis_log.path())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state from a loaded config, an engine and an opened analysis log.
    /// Taking the engine and log as arguments lets tests pass their own.
    pub fn new(config: &Config, engine: Engine, analysis_log: AnalysisLog) -> Self {
        // A hand-built config may say 0; one slot at least keeps the service usable.
        let max_concurrent_syncs = config.rsyncserver.max_concurrent_syncs.max(1);
        Self {
            inner: Arc::new(Inner {
                engine,
                users: UserTable::new(&config.rsyncserver.auth),
                scopes: Scopes::new(&config.rsyncserver.scopes),
                login_damping: LoginDamping::new(&config.rsyncserver.login_damping),
                sync_slots: Arc::new(Semaphore::new(max_concurrent_syncs)),
                max_concurrent_syncs,
                tools: config.config.tools.clone(),
                analysis_log,
                syncs: Arc::new(SyncTracker::default()),
            }),
        }
    }

    /// The sync engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The service users allowed on the sync routes.
    pub fn users(&self) -> &UserTable {
        &self.inner.users
    }

    /// What each user may sync from and to.
    pub fn scopes(&self) -> &Scopes {
        &self.inner.scopes
    }

    /// Failed-login tallies per client address.
    pub fn login_damping(&self) -> &LoginDamping {
        &self.inner.login_damping
    }

    /// One permit per sync allowed to run at once (`rsyncserver.max_concurrent_syncs`).
    pub fn sync_slots(&self) -> &Arc<Semaphore> {
        &self.inner.sync_slots
    }

    /// The configured cap on syncs running at once.
    pub fn max_concurrent_syncs(&self) -> usize {
        self.inner.max_concurrent_syncs
    }

    /// The `config.tools` links shown on the home page.
    pub fn tools(&self) -> &BTreeMap<String, String> {
        &self.inner.tools
    }

    /// Where each sync's JSON line goes.
    pub fn analysis_log(&self) -> &AnalysisLog {
        &self.inner.analysis_log
    }

    /// Syncs still running; shutdown waits on it.
    pub fn syncs(&self) -> &Arc<SyncTracker> {
        &self.inner.syncs
    }
}
