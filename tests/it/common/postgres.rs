//! A throwaway PostgreSQL for one test, and the job-store backend a test runs against.
//!
//! Debian's postgresql-15 binaries (`initdb`, `postgres`), not on `PATH`: a cluster in a
//! temp dir, listening on 127.0.0.1 only on a free port, trust auth, no fsync. Both refuse
//! to run as root, so under root the rig runs them as the `postgres` user the package
//! creates. The server is this test's child: killed on drop, or when the test dies.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::net::free_port;
use super::process::Owned;
use super::service::ServiceConfig;
use super::Service;

/// Where Debian's postgresql-15 puts its server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Lease of a shared store in tests: short, so that a takeover happens in seconds.
pub const TEST_LEASE_SECONDS: u64 = 3;

fn missing_message() -> String {
    format!(
        "PostgreSQL 15 not found in {PG_BIN}: install it with `apt-get install postgresql-15` (or run cmd/test.sh)"
    )
}

/// A PostgreSQL server in a temp dir, stopped (SIGKILL) on drop.
pub struct PgServer {
    process: Option<Owned>,
    port: u16,
    dir: TempDir,
    user: Option<(u32, u32)>,
}

/// `(uid, gid)` of the `postgres` user when running as root (the server refuses root).
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "no `postgres` user to run PostgreSQL as (root is refused): {}",
            missing_message()
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    Some((id("-u"), id("-g")))
}

/// Makes `cmd` run as `user` (before the rig's own pre-exec hooks, so that the
/// parent-death signal set afterwards survives the change of user).
fn run_as(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

fn chown(path: &Path, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown for postgres");
    }
}

impl PgServer {
    /// Creates a cluster (`initdb`) and starts the server; returns once it accepts
    /// connections. Panics with the install command when the binaries are missing.
    pub async fn start() -> PgServer {
        let bin = Path::new(PG_BIN);
        assert!(
            bin.join("initdb").is_file() && bin.join("postgres").is_file(),
            "{}",
            missing_message()
        );
        let user = unprivileged();
        let dir = tempfile::Builder::new()
            .prefix("imagersync-pg-")
            .tempdir()
            .expect("tempdir");
        chown(dir.path(), user);
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D", "data", "-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--no-locale", "--no-sync"])
            .current_dir(dir.path());
        run_as(&mut initdb, user);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = PgServer {
            process: None,
            port: free_port(),
            dir,
            user,
        };
        server.start_again().await;
        server
    }

    /// Starts the server (again) on the same data and port; returns once it answers.
    pub async fn start_again(&mut self) {
        assert!(self.process.is_none(), "PostgreSQL is already running");
        let mut cmd = Command::new(Path::new(PG_BIN).join("postgres"));
        cmd.args(["-D", "data", "-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.path().display()),
            ])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=100"])
            .current_dir(self.dir.path());
        run_as(&mut cmd, self.user);
        let log = self.dir.path().join("postgres.log");
        let process = Owned::spawn("postgres", cmd, &log, &log);
        self.process = Some(process);
        self.wait_accepting().await;
    }

    /// Stops the server with a fast shutdown (SIGINT: open sessions are cut, as when an
    /// operator restarts PostgreSQL) and waits for it to exit; the data stays.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(process.pid() as i32, libc::SIGINT) };
            assert!(
                process.wait_timeout(Duration::from_secs(60)).is_some(),
                "PostgreSQL did not stop within 60 s"
            );
        }
    }

    async fn wait_accepting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(conn) =
                <sqlx::PgConnection as sqlx::Connection>::connect(&self.url("postgres")).await
            {
                let _ = sqlx::Connection::close(conn).await;
                return;
            }
            if let Some(status) = self.process.as_mut().and_then(Owned::exited) {
                panic!(
                    "postgres exited ({status}): {}",
                    self.process.as_ref().unwrap().log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/database` (trust auth: no password).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates an empty database `name`.
    pub async fn create_database(&self, name: &str) {
        let mut conn = self.connect("postgres").await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
    }

    /// A connection to `database`.
    pub async fn connect(&self, database: &str) -> sqlx::PgConnection {
        <sqlx::PgConnection as sqlx::Connection>::connect(&self.url(database))
            .await
            .expect("connect to the test PostgreSQL")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

/// Which job store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: the service's own SQLite file.
    Sqlite,
    /// A PostgreSQL server of the test's own.
    Postgres,
}

/// The job database of one test: nothing to start for SQLite, a server for PostgreSQL.
pub struct JobDb {
    /// Which backend.
    pub backend: Backend,
    /// The server, for PostgreSQL.
    pub pg: Option<PgServer>,
}

/// The database the service uses in a PostgreSQL test.
pub const DATABASE: &str = "imagersync";

impl JobDb {
    /// Starts what `backend` needs.
    pub async fn start(backend: Backend) -> JobDb {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let pg = PgServer::start().await;
                pg.create_database(DATABASE).await;
                Some(pg)
            }
        };
        JobDb { backend, pg }
    }

    /// `config` using this job database (and, for PostgreSQL, the tests' short lease).
    pub fn apply(&self, config: ServiceConfig) -> ServiceConfig {
        match &self.pg {
            None => config,
            Some(pg) => ServiceConfig {
                job_database: Some(pg.url(DATABASE)),
                lease_seconds: Some(TEST_LEASE_SECONDS),
                ..config
            },
        }
    }

    /// The state of job `id` as stored, read around the service (which may be stopped).
    pub async fn stored_state(&self, service: &Service, id: i64) -> Option<String> {
        match &self.pg {
            None => {
                let db = rusqlite::Connection::open(service.job_database()).unwrap();
                rusqlite::OptionalExtension::optional(db.query_row(
                    "SELECT state FROM jobs WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                ))
                .unwrap()
            }
            Some(pg) => {
                let mut conn = pg.connect(DATABASE).await;
                sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }

    /// Moves job `id`'s creation time `days` back (what pruning reads); returns whether
    /// the row existed.
    pub async fn age_job(&self, service: &Service, id: i64, days: i64) -> bool {
        match &self.pg {
            None => {
                let db = rusqlite::Connection::open(service.job_database()).unwrap();
                let ms = days * 24 * 60 * 60 * 1000;
                db.execute(
                    "UPDATE jobs SET created_ms = created_ms - ?1 WHERE id = ?2",
                    (ms, id),
                )
                .unwrap()
                    == 1
            }
            Some(pg) => {
                let mut conn = pg.connect(DATABASE).await;
                sqlx::query(
                    "UPDATE jobs SET created_at = created_at - make_interval(days => $1) WHERE id = $2",
                )
                .bind(i32::try_from(days).unwrap())
                .bind(id)
                .execute(&mut conn)
                .await
                .unwrap()
                .rows_affected()
                    == 1
            }
        }
    }
}
