//! The sync's own log, in the logrus text format of the original service
//! (`time="YYYY-MM-DD HH:MM:SS" level=info msg="..."`), returned as `rsync_info`.

use std::fmt::Write as _;
use std::sync::Mutex;

/// Severity of a log line, as logrus names it.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    /// Progress.
    Info,
    /// Something odd that did not stop the sync.
    Warning,
    /// Something that made an image fail.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// Collects the log lines of one sync; safe to write from concurrent blob transfers.
#[derive(Default)]
pub struct SyncLog {
    text: Mutex<String>,
}

impl SyncLog {
    /// Appends an info line.
    pub fn info(&self, msg: impl AsRef<str>) {
        self.line(Level::Info, msg.as_ref());
    }

    /// Appends a warning line.
    pub fn warn(&self, msg: impl AsRef<str>) {
        self.line(Level::Warning, msg.as_ref());
    }

    /// Appends an error line.
    pub fn error(&self, msg: impl AsRef<str>) {
        self.line(Level::Error, msg.as_ref());
    }

    /// Appends one line at `level`; the message is quoted and escaped so that input can
    /// never forge a line of its own.
    pub fn line(&self, level: Level, msg: &str) {
        tracing::debug!(target: "imagersync::sync", level = level.as_str(), "{msg}");
        let time = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
        let mut text = self.text.lock().expect("sync log lock");
        let _ = write!(text, "time=\"{time}\" level={} msg=\"", level.as_str());
        for c in msg.chars() {
            match c {
                '"' => text.push_str("\\\""),
                '\\' => text.push_str("\\\\"),
                '\n' => text.push_str("\\n"),
                '\r' => text.push_str("\\r"),
                '\t' => text.push_str("\\t"),
                c if c.is_control() => {
                    let _ = write!(text, "\\u{{{:x}}}", c as u32);
                }
                c => text.push(c),
            }
        }
        text.push_str("\"\n");
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.text.lock().expect("sync log lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_logrus_lines_and_escapes() {
        let log = SyncLog::default();
        log.info("Get manifest from a:b");
        log.error("bad \"x\"\ntime=\"forged\"");
        let text = log.text();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("time=\""));
        assert!(lines[0].ends_with(" level=info msg=\"Get manifest from a:b\""));
        assert!(lines[1].contains(r#"level=error msg="bad \"x\"\ntime=\"forged\"""#));
    }
}
