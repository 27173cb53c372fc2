//! The sync engine: turns a source/target pair into copied images. Knows nothing of HTTP
//! serving; the API and the command line both drive it through [`Engine::sync`].

mod report;

pub use report::{FailureKind, ImageResult, ImageStatus, SyncReport, SyncStatus};

use crate::config::RsyncConfig;

/// Shared engine state: registry clients, credentials and limits, reused by every sync.
pub struct Engine {
    config: RsyncConfig,
}

impl Engine {
    /// Builds the engine from the `rsyncserver.rsyncconfig` section.
    pub fn new(config: &RsyncConfig) -> Self {
        Self { config: config.clone() }
    }

    /// Copies `source` to `target` (image-syncer rule syntax) and reports what happened.
    /// Never panics on bad input; every problem ends up in the report.
    pub async fn sync(&self, source: &str, target: &str) -> SyncReport {
        let _ = (&self.config, source, target);
        todo!("engine")
    }
}
