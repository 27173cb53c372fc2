//! What every handler shares: the engine, the users, the home-page links, the analysis
//! log and the running-sync counter.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::auth::UserTable;
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
    tools: BTreeMap<String, String>,
    analysis_log: AnalysisLog,
    syncs: Arc<SyncTracker>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("users", &self.inner.users)
            .field("analysis_log", &self.inner.analysis_log.path())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state from a loaded config, an engine and an opened analysis log.
    /// Taking the engine and log as arguments lets tests pass their own.
    pub fn new(config: &Config, engine: Engine, analysis_log: AnalysisLog) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                users: UserTable::new(&config.rsyncserver.auth),
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
