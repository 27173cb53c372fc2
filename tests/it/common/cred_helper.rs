//! A Docker credential helper for tests: a `docker-credential-<name>` shell script in its
//! own directory that answers `get` from a file, counts its calls and records what it was
//! asked. Put [`CredHelper::path_env`] in the service's `PATH` (the service process only).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::TempDir;

/// The script: one line per call in `calls`, the server asked in `servers`; hangs while
/// `hang` exists; prints `answer` and exits with the code in `exit` (0 when absent).
const SCRIPT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
[ "$1" = get ] || { echo "unsupported verb $1"; exit 1; }
IFS= read -r server || true
echo call >> "$dir/calls"
printf '%s\n' "$server" >> "$dir/servers"
while [ -f "$dir/hang" ]; do sleep 1; done
cat "$dir/answer"
exit "$(cat "$dir/exit" 2>/dev/null || echo 0)"
"#;

/// A helper script and the files it answers from.
pub struct CredHelper {
    dir: TempDir,
    name: String,
}

impl CredHelper {
    /// Installs `docker-credential-<name>` in a fresh directory, with no answer yet.
    pub fn install(name: &str) -> CredHelper {
        let dir = tempfile::Builder::new()
            .prefix("imagersync-helper-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join(format!("docker-credential-{name}"));
        std::fs::write(&path, SCRIPT).expect("write helper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod helper");
        let helper = CredHelper {
            dir,
            name: name.to_owned(),
        };
        helper.not_found();
        helper
    }

    /// The suffix to configure (`credential_helper: NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `PATH` for the service: this directory first, then the test's own `PATH`.
    pub fn path_env(&self) -> (&'static str, String) {
        let inherited = std::env::var("PATH").unwrap_or_default();
        ("PATH", format!("{}:{inherited}", self.dir.path().display()))
    }

    /// From now on the helper answers `username` / `secret`.
    pub fn answer(&self, username: &str, secret: &str) {
        let json = serde_json::json!({"ServerURL": "", "Username": username, "Secret": secret});
        self.write("answer", &json.to_string());
        self.write("exit", "0");
    }

    /// From now on the helper answers as docker-credential-helpers does for a server it
    /// holds nothing for.
    pub fn not_found(&self) {
        self.write("answer", "credentials not found in native keychain\n");
        self.write("exit", "1");
    }

    /// From now on the helper never answers.
    pub fn hang(&self) {
        self.write("hang", "");
    }

    /// How many times the helper ran.
    pub fn calls(&self) -> usize {
        self.read("calls").lines().count()
    }

    /// The servers it was asked for, one per call.
    pub fn servers(&self) -> Vec<String> {
        self.read("servers").lines().map(str::to_owned).collect()
    }

    fn write(&self, file: &str, text: &str) {
        // Write then rename, so a running helper never reads half a file.
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write helper file");
        std::fs::rename(&tmp, self.dir.path().join(file)).expect("rename helper file");
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    /// The helper's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for CredHelper {
    fn drop(&mut self) {
        // Let a hanging script end (the service has killed it, but be sure).
        let _ = std::fs::remove_file(self.dir.path().join("hang"));
    }
}
