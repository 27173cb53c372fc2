//! The packagings as shipped (issue 19): the systemd unit (`build/imagersync-service.service`)
//! and the container (`build/Containerfile`), each run the way it runs the service, but
//! without systemd or a container engine.
//!
//! Each file is parsed for what it decides: the service user, the working directory, the
//! command line, the environment and the directories the service may write (the unit's
//! `ReadWritePaths=` and `StateDirectory=`-style directories; the Containerfile's
//! directories that a `RUN install -d -o`/`mkdir`+`chown` gives to its `USER`, every
//! `VOLUME` among them). So the test follows the files: a directory they stop granting is
//! a directory the service can no longer write here either.
//!
//! The binary Cargo built is installed where the command names it, in a temp root that
//! stands for `/`: every directory belongs to root (0755), only the writable ones belong
//! to the service user, and the shipped `configs/config.yaml` (the admin password
//! changed, the test's registries added, nothing else) is the user's own 0600 file, as
//! both install steps leave it. The service runs as `nobody` (`setpriv`) with the
//! packaging's environment only. It must start, answer `/check`, sync one image between
//! two real registries (skopeo checks what landed), keep the job across a restart, stop
//! with exit 0 on SIGTERM, and write nothing outside the writable directories.
//!
//! Not modelled: systemd's mount namespace (`ProtectSystem=strict`) and the image's
//! layers. Read-only is ownership here (a root-owned tree, an unprivileged service),
//! which is what already decides for a process whose install tree belongs to root.
//! `systemd-analyze verify` checks the unit's directives themselves.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::cases::Cases;
use crate::common::contract::status_of;
use crate::common::fixture::random_password;
use crate::common::net::free_port;
use crate::common::process::Owned;
use crate::common::service::{json_of, wait_ready, BIN};
use crate::common::tools::{SETPRIV, SYSTEMD_ANALYZE};
use crate::common::{skopeo, Creds, Format, Image, Registry};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/build/imagersync-service.service"
);
const CONTAINERFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/build/Containerfile");
const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/config.yaml");

/// The account the service runs as here, standing in for the packagings' `imagersync`.
const RUN_USER: &str = "nobody";
const RUN_GROUP: &str = "nogroup";
const RUN_UID: u32 = 65534;
const RUN_GID: u32 = 65534;

/// The `PATH` systemd gives a service; the container's base image sets the same.
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest a graceful stop of an idle service may take before the test calls it hung.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const KIB: usize = 1024;

// ---------------------------------------------------------------------------------------
// What a packaging decides, read from its file.

/// How one packaging runs the service.
#[derive(Debug)]
struct Packaging {
    /// The file it was read from (for messages).
    file: &'static str,
    /// The account the service runs as.
    user: String,
    /// The working directory (absolute).
    working_dir: PathBuf,
    /// The command line: the binary (absolute path) and its arguments.
    command: Vec<String>,
    /// Environment variables the packaging sets.
    env: Vec<(String, String)>,
    /// Directories the service user may write (absolute).
    writable: Vec<PathBuf>,
}

impl Packaging {
    /// The `--configFile` argument of the command (absolute).
    fn config_file(&self) -> PathBuf {
        let value = flag_value(&self.command, "--configFile")
            .unwrap_or_else(|| panic!("{}: the command has no --configFile", self.file));
        let path = PathBuf::from(value);
        assert!(
            path.is_absolute(),
            "{}: --configFile {value} is relative",
            self.file
        );
        path
    }

    /// Whether `path` is one of the writable directories or inside one.
    fn is_writable(&self, path: &Path) -> bool {
        self.writable.iter().any(|w| path.starts_with(w))
    }
}

/// The value after `flag` (`--flag value` or `--flag=value`).
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&eq)
        }
    })
}

/// Lines with `\` continuations joined, comments (`#`, and `;` in unit files) and blank
/// lines dropped.
fn logical_lines(text: &str, comment: &[char]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with(comment)) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// Splits on whitespace, keeping double-quoted parts together (quotes removed).
fn words(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn key_value(word: &str, file: &str) -> (String, String) {
    let (k, v) = word
        .split_once('=')
        .unwrap_or_else(|| panic!("{file}: {word:?} is not NAME=value"));
    (k.to_string(), v.to_string())
}

/// Directives that change what the service sees or runs in ways this test does not
/// model; one of them in the unit fails the test, so the model is extended, not
/// silently wrong.
const UNMODELLED_UNIT_KEYS: &[&str] = &[
    "ExecStartPost",
    "RootDirectory",
    "RootImage",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "InaccessiblePaths",
    "ReadOnlyPaths",
    "DynamicUser",
];

/// Reads the `[Service]` section of a unit file.
fn parse_unit(text: &str) -> Packaging {
    let file = "build/imagersync-service.service";
    let mut section = String::new();
    let (mut user, mut working_dir, mut command) = (None, None, None);
    let (mut env, mut writable) = (Vec::new(), Vec::new());
    for line in logical_lines(text, &['#', ';']) {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
            continue;
        }
        if section != "Service" {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{file}: not key=value: {line}"));
        let (key, value) = (key.trim(), value.trim());
        // A step that only creates directories (`install -d`) is modelled by what the
        // sandbox lets the service write (`ReadWritePaths=`); any other step is not.
        let creates_dirs_only = key == "ExecStartPre"
            && words(value.trim_start_matches(['-', '@', ':', '+', '!']))
                .first()
                .is_some_and(|program| program.ends_with("/install"))
            && value.contains(" -d ");
        assert!(
            creates_dirs_only || key != "ExecStartPre",
            "{file}: ExecStartPre={value} is not modelled by tests/it/packaging.rs; teach parse_unit what it does"
        );
        assert!(
            !UNMODELLED_UNIT_KEYS.contains(&key),
            "{file}: {key}= is not modelled by tests/it/packaging.rs; teach parse_unit what it does"
        );
        // systemd's place for each kind of directory it creates for the service user.
        let base = match key {
            "StateDirectory" => Some("/var/lib"),
            "CacheDirectory" => Some("/var/cache"),
            "LogsDirectory" => Some("/var/log"),
            "RuntimeDirectory" => Some("/run"),
            _ => None,
        };
        if let Some(base) = base {
            writable.extend(
                words(value)
                    .iter()
                    .map(|name| Path::new(base).join(name.split(':').next().unwrap())),
            );
            continue;
        }
        match key {
            "User" => user = Some(value.to_string()),
            // A leading `-` means "ignore if missing"; the path is the same.
            "WorkingDirectory" => working_dir = Some(PathBuf::from(value.trim_start_matches('-'))),
            // Prefixes such as `-` or `+` change error handling or privileges, not the command.
            "ExecStart" => {
                command = Some(words(value.trim_start_matches(['-', '@', ':', '+', '!'])))
            }
            "Environment" => env.extend(words(value).iter().map(|w| key_value(w, file))),
            "ReadWritePaths" => writable.extend(
                words(value)
                    .iter()
                    .map(|p| PathBuf::from(p.trim_start_matches(['-', '+']))),
            ),
            _ => {}
        }
    }
    let working_dir: PathBuf =
        working_dir.unwrap_or_else(|| panic!("{file}: no WorkingDirectory="));
    assert!(
        working_dir.is_absolute() && !working_dir.to_string_lossy().contains('%'),
        "{file}: WorkingDirectory={} must be a plain absolute path for this test",
        working_dir.display()
    );
    Packaging {
        file,
        user: user.unwrap_or_else(|| panic!("{file}: no User=")),
        working_dir,
        command: command.unwrap_or_else(|| panic!("{file}: no ExecStart=")),
        env,
        writable,
    }
}

/// Directories a shell command line creates or hands over, with their owner: `install -d
/// [-o OWNER] DIR…`, `mkdir [-p] DIR…` (root's) and `chown [-R] OWNER[:GROUP] PATH…`.
fn dirs_and_owners(run: &str) -> BTreeMap<PathBuf, String> {
    let mut owners = BTreeMap::new();
    for command in run.split(['&', ';', '|']) {
        let args = words(command);
        let Some((program, rest)) = args.split_first() else {
            continue;
        };
        let program = program.rsplit('/').next().unwrap_or(program);
        let mut owner = "root".to_string();
        let mut operands = Vec::new();
        let mut iter = rest.iter();
        while let Some(arg) = iter.next() {
            match (program, arg.as_str()) {
                ("install", "-o" | "--owner") => owner = iter.next().cloned().unwrap_or_default(),
                ("install", "-g" | "-m" | "--group" | "--mode") | ("mkdir", "-m" | "--mode") => {
                    iter.next();
                }
                (_, a) if a.starts_with("--owner=") => owner = a["--owner=".len()..].to_string(),
                (_, a) if a.starts_with('-') => {}
                _ => operands.push(arg.clone()),
            }
        }
        match program {
            "install" if rest.iter().any(|a| a == "-d" || a == "--directory") => {
                for dir in operands {
                    owners.insert(PathBuf::from(dir), owner.clone());
                }
            }
            "mkdir" => {
                for dir in operands {
                    owners.insert(PathBuf::from(dir), "root".to_string());
                }
            }
            "chown" if !operands.is_empty() => {
                let new_owner = operands[0]
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                for path in &operands[1..] {
                    owners.insert(PathBuf::from(path), new_owner.clone());
                }
            }
            _ => {}
        }
    }
    owners
}

/// A JSON array (exec form), as ENTRYPOINT, CMD and VOLUME take it; VOLUME also takes
/// plain words.
fn exec_form(keyword: &str, rest: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(rest) {
        Ok(list) => list,
        Err(_) if keyword == "VOLUME" => words(rest),
        Err(e) => panic!(
            "build/Containerfile: {keyword} {rest}: not the exec (JSON) form ({e}); the shell form is not modelled"
        ),
    }
}

/// Reads the final stage of a Containerfile.
fn parse_containerfile(text: &str) -> Packaging {
    let file = "build/Containerfile";
    let instructions: Vec<(String, String)> = logical_lines(text, &['#'])
        .into_iter()
        .map(|line| {
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            (keyword.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect();
    let start = instructions
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .unwrap_or_else(|| panic!("{file}: no FROM"));
    let (mut user, mut working_dir) = ("root".to_string(), PathBuf::from("/"));
    let (mut entrypoint, mut cmd, mut env) = (Vec::new(), Vec::new(), Vec::new());
    let (mut owners, mut volumes) = (BTreeMap::new(), Vec::new());
    for (keyword, rest) in &instructions[start + 1..] {
        match keyword.as_str() {
            "USER" => user = rest.split(':').next().unwrap_or_default().to_string(),
            "WORKDIR" => working_dir = working_dir.join(rest),
            "ENTRYPOINT" => entrypoint = exec_form(keyword, rest),
            "CMD" => cmd = exec_form(keyword, rest),
            "ENV" => env.extend(words(rest).iter().map(|w| key_value(w, file))),
            "VOLUME" => volumes.extend(exec_form(keyword, rest).into_iter().map(PathBuf::from)),
            "RUN" => owners.extend(dirs_and_owners(rest)),
            _ => {}
        }
    }
    let writable: Vec<PathBuf> = owners
        .into_iter()
        .filter(|(_, owner)| *owner == user)
        .map(|(dir, _)| dir)
        .collect();
    // A fresh volume takes the ownership of the image's directory below it: a VOLUME the
    // user does not own is a place the service cannot write.
    for volume in &volumes {
        assert!(
            writable.contains(volume),
            "{file}: VOLUME {} is not given to USER {user} by a RUN step",
            volume.display()
        );
    }
    entrypoint.extend(cmd);
    assert!(!entrypoint.is_empty(), "{file}: no ENTRYPOINT or CMD");
    Packaging {
        file,
        user,
        working_dir,
        command: entrypoint,
        env,
        writable,
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---------------------------------------------------------------------------------------
// The install tree under a temp root, and the service in it.

/// `/a/b` under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").expect("an absolute path"))
}

/// Creates `dir` and its missing parents, root's and mode 0755.
fn make_dirs(dir: &Path) {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
}

fn give_to_service_user(path: &Path, mode: u32) {
    std::os::unix::fs::chown(path, Some(RUN_UID), Some(RUN_GID))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The install tree under a fresh temp root: the binary, the config (the service user's,
/// 0600), the working directory, and the writable directories (the service user's,
/// 0750); everything else root's.
fn install(packaging: &Packaging, config_text: &str) -> TempDir {
    let root = tempfile::Builder::new()
        .prefix("imagersync-packaging-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = PathBuf::from(&packaging.command[0]);
    assert!(
        binary.is_absolute(),
        "{}: the command's program {} is not an absolute path",
        packaging.file,
        binary.display()
    );
    let binary = under(root.path(), &binary);
    make_dirs(binary.parent().unwrap());
    std::fs::copy(BIN, &binary).unwrap_or_else(|e| panic!("copy {BIN}: {e}"));
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = under(root.path(), &packaging.config_file());
    make_dirs(config.parent().unwrap());
    std::fs::write(&config, config_text).unwrap();
    give_to_service_user(&config, 0o600);
    make_dirs(&under(root.path(), &packaging.working_dir));
    for dir in &packaging.writable {
        let dir = under(root.path(), dir);
        make_dirs(&dir);
        give_to_service_user(&dir, 0o750);
    }
    root
}

/// The shipped config with the admin password changed and the two registries added
/// (plain HTTP, the target's credentials); every other key as shipped.
fn shipped_config(admin_password: &str, src: &Registry, dst: &Registry) -> String {
    let mut config: Value =
        serde_yaml_ng::from_str(&read(SHIPPED_CONFIG)).expect("configs/config.yaml is YAML");
    let server = &mut config["rsyncserver"];
    assert!(
        server["auth"].get("admin").is_some(),
        "configs/config.yaml no longer ships the admin user this test gives a password"
    );
    server["auth"]["admin"] = json!(admin_password);
    let registries = server["rsyncconfig"]["auth"]
        .as_object_mut()
        .expect("configs/config.yaml has rsyncserver.rsyncconfig.auth");
    registries.insert(
        "src".into(),
        json!({"registry": src.host(), "insecure": true}),
    );
    let creds = dst.creds().expect("the target registry has a password");
    registries.insert(
        "dst".into(),
        json!({"registry": dst.host(), "insecure": true, "username": creds.user, "password": creds.pass}),
    );
    serde_yaml_ng::to_string(&config).unwrap()
}

/// Size, modification time, mode and owner of every path under `root` outside the
/// writable directories.
fn read_only_part(
    root: &Path,
    packaging: &Packaging,
) -> BTreeMap<PathBuf, (u64, i64, i64, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let inside = Path::new("/").join(path.strip_prefix(root).unwrap());
            if packaging.is_writable(&inside) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            out.insert(
                inside,
                (
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.mode(),
                    meta.uid(),
                ),
            );
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// Every file under the writable directories, as paths inside the tree.
fn written_files(root: &Path, packaging: &Packaging) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = packaging.writable.iter().map(|w| under(root, w)).collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(Path::new("/").join(path.strip_prefix(root).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A service started from the install tree, as the packaging starts it.
struct Running {
    process: Owned,
    port: u16,
}

impl Running {
    /// Runs the packaging's command as the service user, in its working directory, with
    /// its environment only; the paths in the command point into the tree and the address
    /// is a free loopback port. Returns once `GET /check` is 200.
    async fn start(root: &Path, packaging: &Packaging, client: &Client, log: &Path) -> Running {
        let setpriv = SETPRIV.path();
        let mut failures = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut argv: Vec<String> = packaging
                .command
                .iter()
                .map(|a| match a.starts_with('/') {
                    true => under(root, Path::new(a)).display().to_string(),
                    false => a.clone(),
                })
                .collect();
            let address = format!("127.0.0.1:{port}");
            match argv.iter().position(|a| a == "--address") {
                Some(i) => argv[i + 1] = address,
                None => argv.extend(["--address".to_string(), address]),
            }
            let mut cmd = Command::new(&setpriv);
            cmd.args(["--reuid", RUN_USER, "--regid", RUN_GROUP, "--clear-groups"])
                // setpriv's change of user clears the parent-death signal the rig sets;
                // set it again so an interrupted test leaves no service behind.
                .args(["--pdeathsig", "SIGKILL", "--"])
                .args(&argv)
                .current_dir(under(root, &packaging.working_dir))
                .env_clear()
                .env("PATH", SERVICE_PATH)
                .envs(packaging.env.iter().map(|(k, v)| (k, v)));
            eprintln!(
                "{}: as {RUN_USER} in {}: {}",
                packaging.file,
                packaging.working_dir.display(),
                argv.join(" ")
            );
            let mut process = Owned::spawn(&format!("{} :{port}", packaging.file), cmd, log, log);
            match wait_ready(client, &mut process, port).await {
                Ok(()) => return Running { process, port },
                Err(e) => failures.push_str(&format!("{e}\n{}", process.log_tail(30))),
            }
        }
        panic!("{}: the service did not start:\n{failures}", packaging.file);
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM, as `systemctl stop` and `podman stop` send; asserts exit status 0.
    fn stop(mut self, file: &str) {
        let pid = self.process.pid() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "kill -TERM {pid}"
        );
        let status = self
            .process
            .wait_timeout(STOP_TIMEOUT)
            .unwrap_or_else(|| panic!("{file}: still running {STOP_TIMEOUT:?} after SIGTERM"));
        assert!(
            status.success(),
            "{file}: exited with {status} after SIGTERM\n{}",
            self.process.log_tail(30)
        );
        eprintln!("{file}: SIGTERM: exited with {status}");
    }
}

/// GETs `path` as `creds` and parses the JSON answer.
async fn get_json(client: &Client, url: String, creds: &Creds) -> (StatusCode, Value) {
    let resp = client
        .get(&url)
        .basic_auth(&creds.user, Some(&creds.pass))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    json_of(resp).await
}

/// The whole check of one packaging (see the module comment).
async fn runs_as_packaged(packaging: Packaging) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root to run the service as {RUN_USER} (setpriv) and to give it \
         directories; run the suite as root, as cmd/test.sh and CI do"
    );
    eprintln!(
        "{}: user {} (run as {RUN_USER}), working directory {}, writable {:?}, environment {:?}",
        packaging.file,
        packaging.user,
        packaging.working_dir.display(),
        packaging.writable,
        packaging.env
    );
    assert!(
        !packaging.writable.is_empty(),
        "{}: grants the service no directory to write",
        packaging.file
    );
    let dst_password = random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &dst_password),
    );
    let image = Image::random(Format::Oci, &[256 * KIB, 4 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let admin = Creds::new("admin", &random_password("admin"));
    let root = install(&packaging, &shipped_config(&admin.pass, &src, &dst));
    let before = read_only_part(root.path(), &packaging);
    let logs = tempfile::tempdir().expect("tempdir");
    let client = Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    // First run: health, one sync, stop.
    let service = Running::start(
        root.path(),
        &packaging,
        &client,
        &logs.path().join("run1.log"),
    )
    .await;
    let check = client.get(service.url("/check")).send().await.unwrap();
    let (status, body) = json_of(check).await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"status": "healthy"}))
    );
    let (source, target) = (
        format!("{}/team/app:v1", src.host()),
        format!("{}/prod/app:v1", dst.host()),
    );
    let resp = client
        .post(service.url("/v1/image/rsync"))
        .basic_auth(&admin.user, Some(&admin.pass))
        .json(&json!({"rsync_config": {"source": source, "target": target}}))
        .send()
        .await
        .expect("POST /v1/image/rsync");
    let job_path = resp
        .headers()
        .get("content-location")
        .expect("Content-Location names the job")
        .to_str()
        .unwrap()
        .to_string();
    let (status, body) = json_of(resp).await;
    eprintln!(
        "sync {source} -> {target}: HTTP {status}, {}, job {job_path}",
        status_of(&body)
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_of(&body), "successfully", "{body}");
    skopeo::assert_landed(&dst, "prod/app:v1", &pushed).await;
    let (status, job) = get_json(&client, service.url(&job_path), &admin).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["state"], "succeeded", "{job}");
    service.stop(packaging.file);

    // Second run on the same tree: the job is still there.
    let service = Running::start(
        root.path(),
        &packaging,
        &client,
        &logs.path().join("run2.log"),
    )
    .await;
    let (status, kept) = get_json(&client, service.url(&job_path), &admin).await;
    assert_eq!(status, StatusCode::OK, "{job_path} after a restart: {kept}");
    assert_eq!(
        (&kept["id"], &kept["state"], &kept["result"]),
        (&job["id"], &job["state"], &job["result"]),
        "the job after a restart differs from before"
    );
    eprintln!(
        "after a restart: {job_path} is {} (id {})",
        kept["state"], kept["id"]
    );
    service.stop(packaging.file);

    // Everything the service wrote is in the writable directories.
    assert_eq!(
        read_only_part(root.path(), &packaging),
        before,
        "{}: something outside the writable directories changed",
        packaging.file
    );
    let written = written_files(root.path(), &packaging);
    eprintln!("{}: the service wrote {written:?}", packaging.file);
    assert!(
        written
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "sqlite3")),
        "no job database among {written:?}"
    );
    let analysis = written
        .iter()
        .find(|f| f.ends_with("logs/rsync_analysis.log"))
        .unwrap_or_else(|| panic!("no analysis log among {written:?}"));
    let analysis = std::fs::read_to_string(under(root.path(), analysis)).unwrap();
    assert!(analysis.contains(&source), "analysis log: {analysis}");
}

// ---------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread")]
async fn systemd_unit_runs_the_service_as_installed() {
    runs_as_packaged(parse_unit(&read(UNIT))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_runs_the_service_as_built() {
    runs_as_packaged(parse_containerfile(&read(CONTAINERFILE))).await;
}

/// `systemd-analyze verify` on a copy of the unit whose `ExecStart` names the built
/// binary (it checks that the program exists): no complaint at all. Since it reports
/// unknown directives as warnings with exit status 0, any output fails; the table proves
/// that a typo, a bad value and a missing program are noticed.
#[test]
fn systemd_analyze_verify_accepts_the_unit_and_notices_mistakes() {
    let analyze = SYSTEMD_ANALYZE.path();
    let unit = read(UNIT);
    let packaging = parse_unit(&unit);
    let program = &packaging.command[0];
    assert!(
        unit.contains(&format!("ExecStart={program} ")),
        "the unit's ExecStart does not start with {program}"
    );
    let verify = |text: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        // verify wants the unit's real name: it derives the unit's type from it.
        let path = dir.path().join("imagersync-service.service");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", analyze.display()));
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };
    let built = unit.replace(
        &format!("ExecStart={program} "),
        &format!("ExecStart={BIN} "),
    );
    let (ok, said) = verify(&built);
    eprintln!("systemd-analyze verify (ExecStart={BIN}): ok={ok}, output {said:?}");
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    let mut cases = Cases::new();
    let mistakes = [
        // Whole lines, so a comment that quotes a directive is not what changes.
        (
            "a misspelt directive",
            "\nProtectSystem=strict\n",
            "\nProtectSytem=strict\n",
            "ProtectSytem",
        ),
        (
            "a bad value",
            "\nRestart=on-failure\n",
            "\nRestart=sometimes\n",
            "sometimes",
        ),
        (
            "a missing program",
            BIN,
            "/nonexistent/imagersync_service_bin",
            "/nonexistent",
        ),
    ];
    for (name, from, to, expected) in mistakes {
        cases.check(name, || {
            assert!(built.contains(from), "the unit no longer holds {from}");
            let (ok, said) = verify(&built.replacen(from, to, 1));
            assert!(
                !(ok && said.trim().is_empty()),
                "{to:?}: verify said nothing"
            );
            assert!(said.contains(expected), "{to:?}: {said}");
        });
    }
    cases.finish();
}

/// The parsers on the shipped files: what each packaging grants is what the tests above
/// run with, printed for the record.
#[test]
fn parsers_read_what_the_files_say() {
    let unit = parse_unit(&read(UNIT));
    assert_eq!(unit.user, "imagersync");
    assert!(unit.config_file().is_absolute());
    let container = parse_containerfile(&read(CONTAINERFILE));
    assert_eq!(container.user, "imagersync");
    assert!(container.config_file().is_absolute());
    let owners = dirs_and_owners(
        "apt-get update && install -d -o svc -g svc -m 0750 /a /b; mkdir -p /c && chown -R svc:svc /c; mkdir /d",
    );
    let expected: BTreeMap<PathBuf, String> =
        [("/a", "svc"), ("/b", "svc"), ("/c", "svc"), ("/d", "root")]
            .into_iter()
            .map(|(p, o)| (PathBuf::from(p), o.to_string()))
            .collect();
    assert_eq!(owners, expected);
    eprintln!("unit: {unit:#?}\ncontainer: {container:#?}");
}
