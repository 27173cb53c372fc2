//! Child processes owned by a test: spawned with their output in a file, killed and
//! reaped on drop, and their log tail printed when the test is failing.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running child process, killed and reaped when dropped.
pub struct Owned {
    child: Child,
    label: String,
    logs: Vec<PathBuf>,
}

impl Owned {
    /// Spawns `cmd` with stdout and stderr written to the given files (the same path
    /// twice is allowed). The child gets SIGKILL if the spawning thread dies, so an
    /// interrupted test run leaves no process behind; spawn from the test's own thread
    /// (the test body), not from `spawn_blocking`, whose threads come and go.
    pub fn spawn(label: &str, mut cmd: Command, stdout: &Path, stderr: &Path) -> Owned {
        let out = File::create(stdout).expect("create stdout log");
        let err = if stderr == stdout {
            out.try_clone().expect("clone log file")
        } else {
            File::create(stderr).expect("create stderr log")
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let mut logs = vec![stdout.to_path_buf()];
        if stderr != stdout {
            logs.push(stderr.to_path_buf());
        }
        Owned {
            child,
            label: label.to_string(),
            logs,
        }
    }

    /// Process id of the child itself (not of a shell around it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `Some(exit status)` once the child has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("poll child")
    }

    /// Waits up to `timeout` for the child to exit; kills it if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The last `lines` lines of each log file, labelled, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for path in &self.logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            out.push_str(&format!("--- {} ({}) ---\n", self.label, path.display()));
            for line in &all[start..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(40));
        }
    }
}
