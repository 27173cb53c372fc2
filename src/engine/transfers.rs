//! What every sync of the service shares about blob transfers: a global cap on streams at
//! once, one transfer per (registry, blob) at a time, and where blobs are known to be, so a
//! blob already in one repository of a registry is mounted instead of sent again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedMutexGuard, Semaphore, SemaphorePermit};

/// Known blob locations kept at most; the map is cleared when it grows past this.
const MAX_KNOWN_LOCATIONS: usize = 100_000;

type Key = (String, String);

/// Shared transfer state, owned by the engine.
pub(crate) struct Transfers {
    slots: Semaphore,
    max_streams: usize,
    in_flight: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    locations: Mutex<HashMap<Key, String>>,
}

/// Held while one blob is being brought to one registry; others wanting the same wait.
pub(crate) struct BlobTurn<'a> {
    guard: Option<OwnedMutexGuard<()>>,
    key: Key,
    transfers: &'a Transfers,
}

impl Transfers {
    /// Shared state allowing `max_streams` blob streams at once across all syncs.
    pub(crate) fn new(max_streams: usize) -> Self {
        Self {
            slots: Semaphore::new(max_streams.max(1)),
            max_streams: max_streams.max(1),
            in_flight: Mutex::default(),
            locations: Mutex::default(),
        }
    }

    /// A stream slot; waits while the service-wide cap is reached.
    pub(crate) async fn slot(&self) -> SemaphorePermit<'_> {
        self.slots
            .acquire()
            .await
            .expect("transfer semaphore never closes")
    }

    /// The service-wide cap of streams at once.
    pub(crate) fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Streams holding a slot right now.
    pub(crate) fn in_flight(&self) -> usize {
        self.max_streams - self.slots.available_permits()
    }

    /// Exclusive turn for `digest` at `registry`: a second sync needing the same blob
    /// waits here, then finds it present (or mountable) instead of sending it again.
    pub(crate) async fn turn(&self, registry: &str, digest: &str) -> BlobTurn<'_> {
        let key = (registry.to_owned(), digest.to_owned());
        let lock = self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .entry(key.clone())
            .or_default()
            .clone();
        BlobTurn {
            guard: Some(lock.lock_owned().await),
            key,
            transfers: self,
        }
    }

    /// Records that `repository` at `registry` holds `digest`.
    pub(crate) fn remember(&self, registry: &str, digest: &str, repository: &str) {
        let mut locations = self.locations.lock().expect("locations lock");
        if locations.len() >= MAX_KNOWN_LOCATIONS {
            locations.clear();
        }
        locations.insert(
            (registry.to_owned(), digest.to_owned()),
            repository.to_owned(),
        );
    }

    /// A repository at `registry` known to hold `digest`, if any.
    pub(crate) fn location(&self, registry: &str, digest: &str) -> Option<String> {
        let locations = self.locations.lock().expect("locations lock");
        locations
            .get(&(registry.to_owned(), digest.to_owned()))
            .cloned()
    }

    /// Forgets a location that turned out wrong (the blob was deleted there).
    pub(crate) fn forget(&self, registry: &str, digest: &str) {
        let mut locations = self.locations.lock().expect("locations lock");
        locations.remove(&(registry.to_owned(), digest.to_owned()));
    }
}

impl Drop for BlobTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut in_flight = self.transfers.in_flight.lock().expect("in-flight lock");
        // Only the map still holds the lock: nobody waits for this blob any more.
        if in_flight
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            in_flight.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn one_turn_per_blob_and_registry_and_entries_go_away() {
        let transfers = Arc::new(Transfers::new(4));
        let running = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (t, r, m) = (transfers.clone(), running.clone(), max_seen.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = t.turn("reg", "sha256:x").await;
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                r.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max_seen.load(Ordering::SeqCst), 1);
        assert!(transfers.in_flight.lock().unwrap().is_empty());
        let _other = transfers.turn("reg", "sha256:y").await;
        let _same_blob_other_registry = transfers.turn("reg2", "sha256:x").await;
    }

    #[test]
    fn remembers_locations() {
        let t = Transfers::new(1);
        t.remember("reg", "d", "team/a");
        assert_eq!(t.location("reg", "d").as_deref(), Some("team/a"));
        assert_eq!(t.location("reg2", "d"), None);
        t.forget("reg", "d");
        assert_eq!(t.location("reg", "d"), None);
    }
}
