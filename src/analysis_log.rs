//! The analysis log (`rsyncserver.logfile`): one JSON object per line, one line per sync.
//!
//! The file is opened for each line rather than held open, so `logrotate` can move it
//! away without a restart (no `copytruncate` needed). A mutex serialises writers so two
//! syncs finishing together never interleave their lines.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// File mode for a newly created log: the log names users and images, so not world-readable.
const FILE_MODE: u32 = 0o640;
/// Mode for a parent folder this service has to create.
const DIR_MODE: u32 = 0o750;

/// Appends JSON lines to the analysis log file.
#[derive(Debug)]
pub struct AnalysisLog {
    path: PathBuf,
    write_lock: Mutex<()>,
}

impl AnalysisLog {
    /// Creates the parent folder and the file if missing, and checks the file can be
    /// appended to, so a bad `rsyncserver.logfile` stops start-up instead of the first sync.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir_all(parent)?;
        }
        open_append(&path)?;
        Ok(Self {
            path,
            write_lock: Mutex::new(()),
        })
    }

    /// Where the lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serialises `entry` as one JSON line and appends it.
    ///
    /// This is a small blocking write; callers on the async runtime accept that, since a
    /// line is a few KiB at most and happens once per sync.
    pub fn append<T: Serialize>(&self, entry: &T) -> io::Result<()> {
        // serde_json escapes control characters, so a newline inside a reference can never
        // split an entry across lines.
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        // A poisoned lock only means another writer panicked mid-line; the file is still
        // usable, so keep logging rather than losing every later line.
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        // One write_all of the whole line on an O_APPEND file: the line lands in one piece
        // even if another process appends to the same file.
        open_append(&self.path)?.write_all(&line)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options.open(path)
}

fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_folder_and_appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/rsync_analysis.log");
        let log = AnalysisLog::open(&path).unwrap();
        log.append(&serde_json::json!({"n": 1, "s": "x\ny"}))
            .unwrap();
        log.append(&serde_json::json!({"n": 2})).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], r#"{"n":1,"s":"x\ny"}"#);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o007, 0, "log must not be world-readable: {mode:o}");
        }
    }

    #[test]
    fn concurrent_lines_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(AnalysisLog::open(dir.path().join("x.log")).unwrap());
        let big = "z".repeat(64 * 1024);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (log, big) = (log.clone(), big.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        log.append(&serde_json::json!({"i": i, "big": big}))
                            .unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let text = fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 160);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("each line is whole JSON");
        }
    }

    #[test]
    fn unusable_path_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, "").unwrap();
        assert!(AnalysisLog::open(file.join("under-a-file.log")).is_err());
    }
}
