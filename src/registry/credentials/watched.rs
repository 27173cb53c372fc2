//! The configured auth file, read again when it changes on disk. Docker reads its
//! `config.json` for every command, so operators expect a `docker login` (or a secret
//! store rewriting the file) to take effect at once: the next sync uses the new login,
//! without a restart. Checking costs one `stat` per lookup; the file is read only when
//! its identity, size or times differ from the last read.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::AuthFile;

/// What identifies one version of the file: device and inode (a file renamed over it, a
/// Kubernetes secret's swapped symlink), size, and modification and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of `path` now (following symlinks); `None` when it cannot be read.
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// One read of the file.
#[derive(Debug)]
struct Loaded {
    stamp: Option<Stamp>,
    generation: u64,
    file: Arc<Result<AuthFile, String>>,
}

/// The auth file as it is on disk now, or why it cannot be used.
#[derive(Debug, Clone)]
pub struct AuthFileVersion {
    /// Grows by one at every read after the first, so that clients made from an older
    /// version's logins are told apart from the current ones.
    pub generation: u64,
    /// The parsed file, or why it could not be read or parsed.
    pub file: Arc<Result<AuthFile, String>>,
}

/// `rsyncserver.rsyncconfig.auth_file`, re-read when it changes.
#[derive(Debug)]
pub struct WatchedAuthFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl WatchedAuthFile {
    /// Reads the file at `path` now (a missing or broken file is kept as its error, and
    /// read again once it changes).
    pub fn open(path: &Path) -> Self {
        let stamp = Stamp::of(path);
        Self::with(path, stamp, AuthFile::load(path))
    }

    /// A file already read (tests); still read again from `path` when that changes.
    pub fn from_loaded(path: &Path, file: Result<AuthFile, String>) -> Self {
        Self::with(path, Stamp::of(path), file)
    }

    fn with(path: &Path, stamp: Option<Stamp>, file: Result<AuthFile, String>) -> Self {
        Self {
            path: path.to_owned(),
            loaded: Mutex::new(Loaded {
                stamp,
                generation: 1,
                file: Arc::new(file),
            }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current version: the last read, or a new read when the file changed since.
    pub fn current(&self) -> AuthFileVersion {
        // Stamp first, read second: a write between the two leaves an old stamp with the
        // new content, so the next lookup reads once more; never the other way round.
        let now = Stamp::of(&self.path);
        let mut loaded = self.loaded.lock().expect("auth file lock");
        if now != loaded.stamp {
            let file = AuthFile::load(&self.path);
            match &file {
                Ok(f) => tracing::info!("auth file changed, read again: {}", f.summary()),
                Err(e) => tracing::warn!(
                    "auth file changed and cannot be used: {e} (syncs that need it fail until it is fixed)"
                ),
            }
            *loaded = Loaded {
                stamp: now,
                generation: loaded.generation + 1,
                file: Arc::new(file),
            };
        }
        AuthFileVersion {
            generation: loaded.generation,
            file: loaded.file.clone(),
        }
    }

    /// One line for the start-up log: the summary, or why the file cannot be used.
    pub fn summary(&self) -> String {
        match self.current().file.as_ref() {
            Ok(file) => file.summary(),
            Err(e) => e.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::credentials::{Login, Source};

    fn user_of(version: &AuthFileVersion) -> String {
        let file = version.file.as_ref().as_ref().expect("file parses");
        match file.lookup("reg.example.com", "team/app") {
            Some((Source::Fixed(Login::Basic { password, .. }), _)) => password.expose().into(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rewritten_or_replaced_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let write = |p: &Path, pw: &str| {
            let json = format!(
                r#"{{"auths": {{"reg.example.com": {{"username": "u", "password": "{pw}"}}}}}}"#
            );
            std::fs::write(p, json).unwrap();
        };
        write(&path, "one");
        let watched = WatchedAuthFile::open(&path);
        let first = watched.current();
        assert_eq!(user_of(&first), "one");
        assert_eq!(
            watched.current().generation,
            first.generation,
            "unchanged: not read again"
        );

        write(&path, "two-longer");
        let second = watched.current();
        assert_eq!(user_of(&second), "two-longer");
        assert!(second.generation > first.generation);

        // Same size, renamed over the old file (a new inode), as secret stores write.
        let next = dir.path().join("config.json.new");
        write(&next, "six-longer");
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(user_of(&watched.current()), "six-longer");

        std::fs::remove_file(&path).unwrap();
        let gone = watched.current();
        assert!(gone
            .file
            .as_ref()
            .as_ref()
            .unwrap_err()
            .contains("cannot read it"));
        write(&path, "back");
        assert_eq!(user_of(&watched.current()), "back");
    }
}
