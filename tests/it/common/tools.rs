//! Locating the external tools the rig needs, with an install hint when one is missing.

use std::path::{Path, PathBuf};

/// An external program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Executable name looked up on `PATH`.
    pub name: &'static str,
    /// Debian package that installs it.
    pub package: &'static str,
}

/// The reference registry (distribution 2.8).
pub const DOCKER_REGISTRY: Tool = Tool {
    name: "docker-registry",
    package: "docker-registry",
};
/// The oracle that inspects and copies images independently of the service.
pub const SKOPEO: Tool = Tool {
    name: "skopeo",
    package: "skopeo",
};
/// Generates the bcrypt password file of an htpasswd-auth registry.
pub const HTPASSWD: Tool = Tool {
    name: "htpasswd",
    package: "apache2-utils",
};

/// Runs a command under a pseudo-terminal (`script -qec`), as a person at a terminal
/// would: the CLI's progress bars.
pub const SCRIPT: Tool = Tool {
    name: "script",
    package: "util-linux",
};
/// Runs a command in a network namespace of its own (tests naming non-loopback addresses).
pub const UNSHARE: Tool = Tool {
    name: "unshare",
    package: "util-linux",
};
/// Brings up that namespace's loopback and puts the named addresses on it.
pub const IP: Tool = Tool {
    name: "ip",
    package: "iproute2",
};
/// The HTTP client inside that namespace (the test's own client cannot enter it).
pub const CURL: Tool = Tool {
    name: "curl",
    package: "curl",
};
/// Makes certificates exactly as Docker's documentation does (`openssl req -x509 ...`).
pub const OPENSSL: Tool = Tool {
    name: "openssl",
    package: "openssl",
};

/// The browser the dashboard test drives (headless).
pub const CHROMIUM: Tool = Tool {
    name: "chromium",
    package: "chromium",
};
/// The WebDriver server for that browser.
pub const CHROMEDRIVER: Tool = Tool {
    name: "chromedriver",
    package: "chromium-driver",
};

/// Starts a program as another user (the packaging test's unprivileged service user).
pub const SETPRIV: Tool = Tool {
    name: "setpriv",
    package: "util-linux",
};
/// Checks a systemd unit file without a running systemd (`systemd-analyze verify`).
pub const SYSTEMD_ANALYZE: Tool = Tool {
    name: "systemd-analyze",
    package: "systemd",
};

impl Tool {
    /// The message a test panics with when the tool is missing.
    pub fn missing_message(&self) -> String {
        format!(
            "{} not found: install it with `apt-get install {}` (or run cmd/test.sh)",
            self.name, self.package
        )
    }

    /// Full path of the tool; panics with [`Tool::missing_message`] if it is not installed.
    pub fn path(&self) -> PathBuf {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        find_in(&path_var, self.name)
            .or_else(|| {
                ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
                    .iter()
                    .map(|dir| Path::new(dir).join(self.name))
                    .find(|p| is_executable(p))
            })
            .unwrap_or_else(|| panic!("{}", self.missing_message()))
    }
}

/// Looks `name` up in a `PATH`-style list of directories.
pub fn find_in(path_var: &std::ffi::OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
