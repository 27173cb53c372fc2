//! Command line: flags, start-up checks, and the two ways to run (serve, or one `sync`).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::batch;
use crate::cli_progress::{CliProgress, ProgressMode};
use crate::config::{Config, RsyncConfig};
use crate::engine::{Engine, FailureKind, SyncContext, SyncRequest, SyncStatus};
use crate::http::response::{RsyncConfigEcho, SyncResponse, TargetEcho};
use crate::server;

/// Exit code for a config or usage problem (clap uses 2 for bad flags as well).
const EXIT_USAGE: u8 = 2;

/// imagersync: copies container images between OCI / Docker registries over an HTTP API.
#[derive(Debug, Parser)]
#[command(name = "imagersync_service_bin", version, about, long_about = None)]
pub struct Cli {
    /// Address to serve on, host:port (`:8080` means every interface, as in the Go service)
    #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:8080", value_parser = parse_address)]
    pub address: SocketAddr,

    /// YAML config file (service users, analysis log, registry credentials)
    #[arg(
        long = "configFile",
        visible_alias = "config-file",
        value_name = "FILE",
        default_value = "configs/config.yaml",
        global = true
    )]
    pub config_file: PathBuf,

    /// Log line format: `text` for people, `json` (one object per line, with the
    /// request id, user and job id as fields where they apply) for log collectors
    #[arg(
        long = "log-format",
        value_enum,
        value_name = "FORMAT",
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,

    /// What to do; without one, serve the HTTP API.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event (the default).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the event's fields,
    /// and `spans` (the request's `request_id`, `user`, `job`; a job's `job`, `user`).
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one sync from the command line, as POST /v1/image/rsync would, and exit
    /// (0 synced, 1 failed, 2 unusable request or config)
    Sync(SyncArgs),
}

/// Arguments of `sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source image or rule, e.g. reg-a.example.com/team/app:v1
    #[arg(long, required_unless_present = "images", conflicts_with = "images")]
    pub source: Option<String>,
    /// Target image or rule, e.g. reg-b.example.com/team/app:v1; repeat for several targets
    #[arg(long, required_unless_present = "images", conflicts_with = "images")]
    pub target: Vec<String>,
    /// image-syncer images file (`source: target` or `source: [targets]`, YAML or JSON);
    /// runs every entry. The config file is optional in this mode.
    #[arg(long, value_name = "FILE")]
    pub images: Option<PathBuf>,
    /// image-syncer auth file (`registry[/namespace]: {username, password, insecure}`),
    /// added to the config's registry credentials
    #[arg(long, value_name = "FILE", requires = "images")]
    pub auth: Option<PathBuf>,
    /// Push even when a target already holds the source's digest
    #[arg(long)]
    pub force: bool,
    /// Copy only these platforms of an index, os/arch[/variant]; repeatable (changes the
    /// index digest)
    #[arg(long = "platform", value_name = "OS/ARCH")]
    pub platforms: Vec<String>,
    /// Leave each image's signatures, attestations and SBOMs (OCI referrers) behind;
    /// without it the config's task.referrers decides (default: copy them)
    #[arg(long)]
    pub no_referrers: bool,
    /// Print the API's JSON response on stdout instead of the sync log
    #[arg(long, conflicts_with = "images")]
    pub json: bool,
    /// No progress on stderr (bars on a terminal, plain lines otherwise) and only
    /// errors logged; the sync log or JSON on stdout and the exit code stay
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parses `--address`: `host:port`, `:port` (all interfaces), or a resolvable name.
fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_owned()
    };
    if let Ok(addr) = full.parse() {
        return Ok(addr);
    }
    full.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("{text:?} is not host:port (e.g. 0.0.0.0:8080 or :8080)"))
}

/// The flag names the Go service took with one dash (Go's `flag` package allows both).
const GO_FLAGS: &[&str] = &["address", "configFile"];

/// Rewrites Go-style `-address x` / `-configFile=x` to `--…`, so existing unit files
/// and scripts written for the Go service keep working unchanged.
pub fn normalize_go_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let Some(text) = arg.to_str().filter(|_| i > 0) else {
                return arg;
            };
            let Some(rest) = text.strip_prefix('-').filter(|r| !r.starts_with('-')) else {
                return arg;
            };
            let name = rest.split('=').next().unwrap_or(rest);
            if GO_FLAGS.contains(&name) {
                OsString::from(format!("--{rest}"))
            } else {
                arg
            }
        })
        .collect()
}

/// Runs the program with `args` (including the program name); returns the exit code.
pub async fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_go_flags(args)) {
        Ok(cli) => cli,
        Err(e) => {
            // Prints help/version to stdout (exit 0) or the usage error to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    match cli.command {
        None => serve(&cli.config_file, cli.address, cli.log_format).await,
        Some(Command::Sync(args)) => sync(&cli.config_file, args, cli.log_format).await,
    }
}

async fn serve(config_file: &Path, address: SocketAddr, format: LogFormat) -> ExitCode {
    init_tracing(Output::Stdout, "info", format);
    let Some(config) = load_config(config_file) else {
        return ExitCode::from(EXIT_USAGE);
    };
    match server::serve(config, config_file, address).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imagersync: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn sync(config_file: &Path, args: SyncArgs, format: LogFormat) -> ExitCode {
    // stdout carries the sync log (or JSON) only; diagnostics and progress go to stderr.
    init_tracing(
        Output::Stderr,
        if args.quiet { "error" } else { "warn" },
        format,
    );
    if let Some(images) = &args.images {
        return sync_batch(config_file, images, args.auth.as_deref(), &args).await;
    }
    let Some(config) = load_config(config_file) else {
        return ExitCode::from(EXIT_USAGE);
    };
    let Some(source) = args.source else {
        return ExitCode::from(EXIT_USAGE);
    };
    let mut rsync = config.rsyncserver.rsyncconfig;
    use_default_auth_file(&mut rsync, args.quiet);
    let engine = Engine::new(&rsync);
    let request = SyncRequest {
        source,
        targets: args.target,
        force: args.force,
        platforms: args.platforms,
        referrers: args.no_referrers.then_some(false),
    };
    let report = engine
        .run_request_with(&request, &progress(args.quiet))
        .await;
    let code = match (report.status, report.failure) {
        (SyncStatus::Successfully, _) => 0,
        (SyncStatus::Unusual, _) | (_, Some(FailureKind::BadInput)) => EXIT_USAGE,
        _ => 1,
    };
    if args.json {
        let SyncRequest {
            source,
            mut targets,
            force,
            platforms,
            referrers,
        } = request;
        let target = if targets.len() == 1 {
            TargetEcho::One(targets.remove(0))
        } else {
            TargetEcho::Many(targets)
        };
        let echo = RsyncConfigEcho {
            source,
            target,
            force,
            platforms,
            referrers,
        };
        let response = SyncResponse::from_report("cli".to_owned(), echo, report);
        match serde_json::to_string_pretty(&response) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("imagersync: cannot print the result: {e}"),
        }
    } else {
        print!("{}", report.log);
        if let Some(error) = &report.error {
            eprintln!("imagersync: {error}");
        }
    }
    ExitCode::from(code)
}

/// Runs every entry of image-syncer files, printing the same log lines; exits 1 when any
/// entry failed, as image-syncer does.
async fn sync_batch(
    config_file: &Path,
    images: &Path,
    auth: Option<&Path>,
    args: &SyncArgs,
) -> ExitCode {
    let batch = match batch::load(images, auth) {
        Ok(batch) => batch,
        Err(e) => {
            eprintln!("imagersync: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // image-syncer users have no service config: use it when present, defaults otherwise.
    let mut rsync = if config_file.exists() {
        match load_config(config_file) {
            Some(config) => config.rsyncserver.rsyncconfig,
            None => return ExitCode::from(EXIT_USAGE),
        }
    } else {
        RsyncConfig::default()
    };
    rsync.auth.extend(batch.credentials);
    use_default_auth_file(&mut rsync, args.quiet);
    let engine = Engine::new(&rsync);
    let (mut failed, mut unusable) = (0, 0);
    for mut request in batch.requests {
        request.force = args.force;
        request.platforms = args.platforms.clone();
        // Batch files have no per-entry switch: the config decides, unless told not to.
        request.referrers = args.no_referrers.then_some(false);
        let report = engine
            .run_request_with(&request, &progress(args.quiet))
            .await;
        print!("{}", report.log);
        match report.status {
            SyncStatus::Successfully => {}
            SyncStatus::Unusual => unusable += 1,
            SyncStatus::Failed => failed += 1,
        }
        if let Some(error) = &report.error {
            eprintln!("imagersync: {}: {error}", request.source);
        }
    }
    if failed + unusable == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("imagersync: {failed} entries failed, {unusable} entries unusable");
        ExitCode::from(1)
    }
}

/// A sync context whose observer draws this run's progress on stderr.
fn progress(quiet: bool) -> SyncContext {
    SyncContext {
        observer: Arc::new(CliProgress::new(ProgressMode::detect(quiet))),
        ..SyncContext::default()
    }
}

/// When the config names no `auth_file`, the CLI (not the service) reads the one skopeo and
/// docker would, and says which in one line on stderr (unless `quiet`).
fn use_default_auth_file(rsync: &mut RsyncConfig, quiet: bool) {
    if rsync.auth_file.is_some() {
        return;
    }
    if let Some(path) = crate::registry::credentials::discover_auth_file() {
        if quiet {
            rsync.auth_file = Some(path);
            return;
        }
        eprintln!(
            "imagersync: registry logins not in the config are read from {}",
            path.display()
        );
        rsync.auth_file = Some(path);
    }
}

/// Loads the config, or prints the one-line reason to stderr.
fn load_config(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => {
            warn_if_readable_by_others(path);
            Some(config)
        }
        Err(e) => {
            eprintln!("imagersync: {e}");
            None
        }
    }
}

/// The config holds service and registry passwords: say so when others can read it.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    mode = format_args!("{mode:03o}"),
                    "config file holds passwords but group/others can read it; run chmod 600 on it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[derive(Clone, Copy)]
enum Output {
    Stdout,
    Stderr,
}

/// `RUST_LOG` wins; otherwise `default` (e.g. `info`).
fn init_tracing(output: Output, default: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only for a person at a terminal; journald and log files get plain text.
    let ansi = std::env::var_os("NO_COLOR").is_none()
        && match output {
            Output::Stdout => std::io::stdout().is_terminal(),
            Output::Stderr => std::io::stderr().is_terminal(),
        };
    let writer = move || -> Box<dyn std::io::Write> {
        match output {
            Output::Stdout => Box::new(std::io::stdout()),
            Output::Stderr => Box::new(std::io::stderr()),
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // try_init: a second call (tests driving `run` twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        // Fields at the top level (`flatten_event`), the spans' fields in `spans`, so a
        // collector reads `request_id`, `user` and `job` without parsing the message.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let args = std::iter::once("imagersync_service_bin")
            .chain(args.iter().copied())
            .map(OsString::from);
        Cli::try_parse_from(normalize_go_flags(args))
    }

    #[test]
    fn shipped_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/config.yaml");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.rsyncserver.auth.contains_key("admin"));
        assert!(config.rsyncserver.rsyncconfig.auth["local"].insecure);
    }

    /// The commented-out block of the shipped config that starts with `  # {key}:`,
    /// uncommented.
    fn commented_example(text: &str, key: &str) -> String {
        let start = format!("  # {key}:");
        let mut lines = text.lines().skip_while(|l| !l.starts_with(&start));
        let first = lines
            .next()
            .unwrap_or_else(|| panic!("no {start} in the config"));
        std::iter::once(first)
            .chain(lines.take_while(|l| l.starts_with("  #   ")))
            .map(|l| format!("  {}", &l[4..]))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn shipped_config_examples_of_the_security_keys_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/config.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let hash_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("#   jenkins: '$2y$"))
            .expect("a bcrypt example under auth");
        let hash = hash_line.split('\'').nth(1).unwrap();
        let yaml = format!(
            "rsyncserver:\n  auth: {{admin: admin, jenkins: '{hash}', promoter: p}}\n{}\n{}\n{}\n",
            commented_example(&text, "scopes"),
            commented_example(&text, "max_concurrent_syncs"),
            commented_example(&text, "login_damping"),
        );
        let config = Config::from_yaml(&yaml, Path::new("example.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let server = &config.rsyncserver;
        assert_eq!(server.scopes.len(), 2, "{yaml}");
        assert_eq!(server.max_concurrent_syncs, 32);
        assert_eq!(server.login_damping.max_failures, 10);
        assert_eq!(server.login_damping.window_seconds, 60);
        // The example hash is what the comment says it is.
        let users = crate::http::auth::UserTable::new(&server.auth);
        assert!(users.verify(&crate::http::auth::Credentials {
            user: "jenkins".into(),
            password: crate::secret::Secret::new("change-me"),
        }));
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.address, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(cli.config_file, PathBuf::from("configs/config.yaml"));
        assert!(cli.command.is_none());
    }

    #[test]
    fn seed_and_go_spellings() {
        for args in [
            &["--address", "127.0.0.1:9000", "--configFile", "x.yaml"][..],
            &["--address=127.0.0.1:9000", "--configFile=x.yaml"],
            &["-address", "127.0.0.1:9000", "-configFile", "x.yaml"],
            &["-address=127.0.0.1:9000", "--config-file", "x.yaml"],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.address, "127.0.0.1:9000".parse().unwrap(), "{args:?}");
            assert_eq!(cli.config_file, PathBuf::from("x.yaml"), "{args:?}");
        }
    }

    #[test]
    fn go_style_port_only_address() {
        assert_eq!(
            parse(&["--address", ":9001"]).unwrap().address,
            "0.0.0.0:9001".parse().unwrap()
        );
        assert!(parse(&["--address", "nonsense"]).is_err());
    }

    #[test]
    fn sync_subcommand() {
        let cli = parse(&[
            "sync",
            "--source",
            "a:1",
            "--target",
            "b:1",
            "--configFile",
            "c.yaml",
        ])
        .unwrap();
        assert_eq!(cli.config_file, PathBuf::from("c.yaml"));
        match cli.command {
            Some(Command::Sync(args)) => {
                assert_eq!(args.source.as_deref(), Some("a:1"));
                assert_eq!(args.target, ["b:1"]);
                assert!(!args.json);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&["sync", "--source", "a"]).is_err(),
            "target is required"
        );
    }

    #[test]
    fn help_names_both_flags_with_defaults() {
        let help = parse(&["--help"]).unwrap_err().to_string();
        for needle in [
            "--address",
            "0.0.0.0:8080",
            "--configFile",
            "configs/config.yaml",
            "sync",
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
    }

    #[test]
    fn short_flags_and_values_left_alone() {
        let args = ["-address", "-h", "-V", "--source", "-source", "-x"].map(OsString::from);
        let out = normalize_go_flags(args.clone());
        // argv[0] is the program, whatever it looks like; only the Go service's own flags
        // are rewritten.
        assert_eq!(out, args);
    }
}
