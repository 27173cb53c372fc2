//! Binds the listener, serves the router, reloads on SIGHUP, and shuts down gracefully
//! on SIGTERM / Ctrl-C.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use tokio::net::TcpListener;

use crate::access::default_passwords::{is_loopback, DefaultPasswords};
use crate::analysis_log::AnalysisLog;
use crate::config::Config;
use crate::config::JobDatabase;
use crate::engine::Engine;
use crate::http::{router, AppState};
use crate::jobs::{JobStore, PostgresStore, SqliteStore};
use crate::reload::Reloader;

/// How long shutdown waits for running syncs before exiting anyway.
///
/// A sync of large multi-platform images between regions can take minutes; cutting it
/// short leaves a target with blobs but no manifest, which the next sync repairs but a
/// caller may not expect. Ten minutes covers normal promotions and stays under the
/// patience of an operator (and systemd's `TimeoutStopSec` in our unit file).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10 * 60);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `rsyncserver.logfile` cannot be created or appended to.
    #[error("config key rsyncserver.logfile: cannot open {path} for appending: {source}")]
    AnalysisLog {
        /// The log file path from the config.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The job database cannot be opened.
    #[error("config key rsyncserver.jobs.database: {0}")]
    JobStore(#[source] crate::jobs::StoreError),
    /// The listen address is taken, not local, or not permitted.
    #[error("cannot listen on {address}: {source} (pass another --address)")]
    Bind {
        /// The address from `--address`.
        address: SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
    /// A service user has a guessable password and the address is not loopback.
    #[error("config key rsyncserver.auth: {0}")]
    DefaultPassword(String),
    /// A file of `rsyncserver.tls` cannot be used.
    #[error("{0}")]
    Tls(#[from] crate::listener_tls::TlsError),
    /// Accepting or serving connections failed.
    #[error("server error: {0}")]
    Serve(#[source] io::Error),
}

impl ServeError {
    /// Process exit code: 2 for what the operator must fix in the config or flags, 1 else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::AnalysisLog { .. }
            | Self::Bind { .. }
            | Self::JobStore(_)
            | Self::DefaultPassword(_)
            | Self::Tls(_) => 2,
            Self::Serve(_) => 1,
        }
    }
}

/// Builds the state from `config`, listens on `address`, and serves until SIGTERM or
/// Ctrl-C, then drains as [`serve_listener`] does.
///
/// SIGHUP reloads the config from `config_file` (see [`crate::reload`]) and the TLS files.
pub async fn serve(
    config: Config,
    config_file: &Path,
    address: SocketAddr,
) -> Result<(), ServeError> {
    refuse_default_passwords(&config, address)?;
    let (tls, tls_reload) = match config.rsyncserver.tls.clone() {
        Some(tls) => {
            let (live, reload) = crate::listener_tls::start(tls).await?;
            (Some(live), Some(reload))
        }
        None => (None, None),
    };
    let store = open_job_store(&config).await?;
    let state = app_state_with(&config, store)?;
    crate::reload::on_hangup(
        Reloader::new(config_file, address, state.clone(), config.clone()),
        tls_reload,
    );
    start_jobs(&state, &config).await;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })?;
    let local = listener.local_addr().unwrap_or(address);
    tracing::info!(
        address = %local,
        version = env!("CARGO_PKG_VERSION"),
        users = config.rsyncserver.auth.len(),
        registries = config.rsyncserver.rsyncconfig.auth.len(),
        analysis_log = %state.analysis_log().path().display(),
        jobs_database = %config.rsyncserver.jobs.database.redacted(),
        replica = state.jobs().replica(),
        scheme = if tls.is_some() { "https" } else { "http" },
        "imagersync listening"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve_listener_with(
        listener,
        state,
        tls,
        async {
            let _ = stop_rx.await;
        },
        SHUTDOWN_GRACE,
    );
    // The first signal starts the graceful drain; a second one means "now", for an
    // operator who does not want to wait for the running syncs.
    let signals = async {
        shutdown_signal().await;
        let _ = stop_tx.send(());
        shutdown_signal().await;
    };
    tokio::select! {
        result = server => result.map_err(ServeError::Serve),
        () = signals => {
            tracing::warn!("second stop signal; exiting now");
            Ok(())
        }
    }
}

/// Stops start-up when a service user's password is guessable and other hosts can reach
/// `address`; on loopback only warns (names, never passwords).
pub fn refuse_default_passwords(config: &Config, address: SocketAddr) -> Result<(), ServeError> {
    let Some(found) = DefaultPasswords::find(&config.rsyncserver.auth) else {
        return Ok(());
    };
    if is_loopback(address) {
        tracing::warn!(
            users = %found.users.join(","),
            "service user(s) with a default password; accepted on loopback only: set a password before listening on another address"
        );
        return Ok(());
    }
    Err(ServeError::DefaultPassword(found.message(address)))
}

/// Opens the job store `rsyncserver.jobs.database` names: the SQLite file, or the
/// PostgreSQL database (connected and migrated).
pub async fn open_job_store(config: &Config) -> Result<Arc<dyn JobStore>, ServeError> {
    let database = &config.rsyncserver.jobs.database;
    Ok(match database {
        JobDatabase::Sqlite(path) => {
            Arc::new(SqliteStore::open(path).map_err(ServeError::JobStore)?)
        }
        JobDatabase::Postgres(url) => Arc::new(
            PostgresStore::connect(url, &database.redacted())
                .await
                .map_err(ServeError::JobStore)?,
        ),
    })
}

/// The router state for `config` with its SQLite job store (a PostgreSQL one needs
/// [`open_job_store`], which connects asynchronously).
pub fn app_state(config: &Config) -> Result<AppState, ServeError> {
    let database = &config.rsyncserver.jobs.database;
    let JobDatabase::Sqlite(path) = database else {
        return Err(ServeError::JobStore(crate::jobs::StoreError::Connect {
            url: database.redacted(),
            cause: "a PostgreSQL store is opened with open_job_store".into(),
        }));
    };
    let store = SqliteStore::open(path).map_err(ServeError::JobStore)?;
    app_state_with(config, Arc::new(store))
}

/// The router state for `config`: engine, users, the opened analysis log, and `store`.
pub fn app_state_with(config: &Config, store: Arc<dyn JobStore>) -> Result<AppState, ServeError> {
    let path = config.rsyncserver.logfile.clone();
    let log =
        AnalysisLog::open(&path).map_err(|source| ServeError::AnalysisLog { path, source })?;
    let mut engine = Engine::new(&config.rsyncserver.rsyncconfig);
    if let Some(pauses) = store.shared_pauses() {
        // Replicas on one database honour each other's 429 pauses.
        engine = engine.with_shared_pauses(pauses);
    }
    Ok(AppState::new(config, engine, log, store))
}

/// Prunes old jobs and picks up those a previous run left queued or running; then
/// prunes once a day. Failures are logged: the service still serves new syncs.
pub async fn start_jobs(state: &AppState, config: &Config) {
    let jobs = state.jobs().clone();
    let days = config.rsyncserver.jobs.history_days;
    match jobs.prune(days).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, days, "old jobs deleted"),
        Err(e) => tracing::error!(error = %e, "cannot delete old jobs"),
    }
    match jobs.resume_unfinished().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "unfinished jobs from the last run resumed"),
        Err(e) => tracing::error!(error = %e, "cannot resume unfinished jobs"),
    }
    // After the resume: a mirror run left unfinished by the last process counts as running.
    state.mirrors().start().await;
    tokio::spawn(async move {
        let mut daily = tokio::time::interval(Duration::from_secs(24 * 60 * 60));
        daily.tick().await;
        loop {
            daily.tick().await;
            if let Err(e) = jobs.prune(days).await {
                tracing::error!(error = %e, "cannot delete old jobs");
            }
        }
    });
}

/// Serves `state` on `listener` until `shutdown` resolves; then stops accepting, lets
/// open requests and running syncs finish for at most `grace`, and returns.
///
/// Public so tests can run the real server on an ephemeral port with their own trigger.
pub async fn serve_listener(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    serve_listener_with(listener, state, None, shutdown, grace).await
}

/// [`serve_listener`], over TLS when `tls` is given (axum-server's rustls acceptor:
/// handshakes run in each connection's task, so a slow client does not stall accepts).
pub async fn serve_listener_with(
    listener: TcpListener,
    state: AppState,
    tls: Option<RustlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let syncs = state.syncs().clone();
    let jobs = state.jobs().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The peer address goes into every request: failed-login damping counts per address
    // (without it, damping would be off).
    // The graceful stop stops accepting and waits for open connections, without a time
    // limit: run it as a task so the wait below can bound it. Plain HTTP goes through our
    // own HTTP/1 loop (half-closed connections are answered); HTTPS through axum-server.
    let mut server = match tls {
        None => tokio::spawn(serve_http1(listener, router(state), async {
            let _ = stop_rx.await;
        })),
        Some(tls) => {
            let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                let _ = stop_rx.await;
                // Like axum's: stop accepting, let open connections finish.
                stopper.graceful_shutdown(None);
            });
            let server = axum_server::from_tcp_rustls(listener.into_std()?, tls)?.handle(handle);
            tokio::spawn(server.serve(app))
        }
    };
    tokio::select! {
        result = &mut server => return flatten(result),
        () = shutdown => {}
    }
    tracing::info!(
        running_syncs = syncs.active(),
        grace_s = grace.as_secs(),
        "shutting down: no new connections; waiting for running requests and syncs"
    );
    let _ = stop_tx.send(());
    // Queued jobs stay queued in the store and start with the next run.
    jobs.stop_starting();
    // Syncs whose caller hung up are not tied to a connection, so wait for them too.
    let drained = async {
        let result = (&mut server).await;
        syncs.wait_idle().await;
        result
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(result) => {
            tracing::info!("shutdown complete");
            flatten(result)
        }
        Err(_) => {
            tracing::warn!(
                running_syncs = syncs.active(),
                "shutdown grace period over; exiting with syncs still running"
            );
            Ok(())
        }
    }
}

/// Serves `app` over HTTP/1.1 on `listener` until `stop` resolves, then waits for the open
/// connections to finish their requests.
///
/// Our own accept loop rather than `axum::serve`, whose connection settings are fixed:
/// it does not allow half-closed connections, so a caller that shuts down its sending
/// side after the request (HTTP/1.0 tools, `nc -N`, some proxies) had its connection
/// dropped and its sync's answer lost. Everything else is as `axum::serve` does it: the
/// peer address in each request (`ConnectInfo`, for failed-login damping), hyper's 30 s
/// limit on reading request headers, and the graceful stop.
async fn serve_http1(
    listener: TcpListener,
    app: axum::Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let half_close = asks_to_close(&stream).await;
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(request.map(axum::body::Body::new))
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .half_close(half_close)
                .serve_connection(TokioIo::new(stream), service);
            // A client that vanishes mid-request is not the server's error.
            let _ = watcher.watch(connection).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Whether the connection's first request says it is the last (HTTP/1.0, or
/// `Connection: close`). Such clients (HTTP/1.0 tools, `nc -N`) may half-close after
/// sending, so their connection is served with half-close allowed and still gets its
/// answer. Every other connection keeps hang-up detection: there the end of the client's
/// stream means the caller is gone, which cancels its queued or running synchronous sync.
/// TCP cannot tell the two apart, so the request itself decides. The head is only peeked
/// at (hyper reads it again); a head that is not complete within 5 s or 8 KiB counts as
/// keep-alive.
async fn asks_to_close(stream: &tokio::net::TcpStream) -> bool {
    let mut head = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    loop {
        let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.peek(&mut head)).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        if let Some(end) = head[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            return last_request(&head[..end]);
        }
        if n == head.len() {
            return false;
        }
        if n == seen {
            // Nothing new since the last look: wait a little for the rest of the head.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen = n;
    }
}

/// Whether a request head (without its blank line) is HTTP/1.0 without keep-alive, or
/// carries `Connection: close`.
fn last_request(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let mut lines = text.split("\r\n");
    let http10 = lines.next().is_some_and(|l| l.ends_with(" http/1.0"));
    let connection = lines
        .filter_map(|l| l.strip_prefix("connection:"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    connection.contains(&"close") || (http10 && !connection.contains(&"keep-alive"))
}

fn flatten(result: Result<io::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    result.map_err(io::Error::other)?
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what systemd and container runtimes send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No SIGINT handler possible: rely on SIGTERM alone.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "stop signal received"),
        () = terminate => tracing::info!(signal = "SIGTERM", "stop signal received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_close_is_allowed_only_for_a_last_request() {
        let cases: [(&[u8], bool); 6] = [
            (b"GET /check HTTP/1.0\r\nHost: x", true),
            (b"GET /check HTTP/1.0\r\nConnection: keep-alive", false),
            (b"POST /v1/image/rsync HTTP/1.1\r\nConnection: close", true),
            (
                b"POST /v1/image/rsync HTTP/1.1\r\nconnection: Keep-Alive, Close",
                true,
            ),
            (b"POST /v1/image/rsync HTTP/1.1\r\nHost: x", false),
            (b"garbage", false),
        ];
        for (head, want) in cases {
            assert_eq!(
                last_request(head),
                want,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    fn state(dir: &std::path::Path) -> AppState {
        let yaml = format!(
            "rsyncserver: {{auth: {{admin: admin}}, logfile: {}, jobs: {{database: {}}}}}",
            dir.join("a.log").display(),
            dir.join("jobs.sqlite3").display()
        );
        let config = Config::from_yaml(&yaml, std::path::Path::new("t.yaml")).unwrap();
        app_state(&config).unwrap()
    }

    struct Running {
        address: SocketAddr,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    async fn start(state: AppState, grace: Duration) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_listener(
            listener,
            state,
            async {
                let _ = rx.await;
            },
            grace,
        ));
        Running {
            address,
            stop,
            task,
        }
    }

    #[tokio::test]
    async fn serves_then_stops_on_signal() {
        let dir = tempfile::tempdir().unwrap();
        let running = start(state(dir.path()), Duration::from_secs(5)).await;
        let url = format!("http://{}/check", running.address);
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert_eq!(body, r#"{"status":"healthy"}"#);
        running.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running.task)
            .await
            .expect("stops promptly when idle")
            .unwrap()
            .unwrap();
        assert!(reqwest::get(&url).await.is_err(), "no longer accepting");
    }

    #[tokio::test]
    async fn waits_for_running_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let sync = state.syncs().start();
        let running = start(state, Duration::from_secs(30)).await;
        // Paused from here: the sleep resolves only once the server task is idle, i.e.
        // has taken the stop and is blocked on the running sync, not merely unscheduled.
        // (The 30 s grace is a later timer, so it cannot fire first.)
        tokio::time::pause();
        running.stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !running.task.is_finished(),
            "must wait for the running sync"
        );
        drop(sync);
        tokio::time::timeout(Duration::from_secs(5), running.task)
            .await
            .expect("stops once the sync is done")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn grace_period_bounds_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let _stuck = state.syncs().start();
        let running = start(state, Duration::from_millis(200)).await;
        running.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running.task)
            .await
            .expect("gives up after the grace period")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn unusable_log_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let yaml = format!(
            "rsyncserver: {{auth: {{admin: admin}}, logfile: {}}}",
            file.join("x.log").display()
        );
        let config = Config::from_yaml(&yaml, std::path::Path::new("t.yaml")).unwrap();
        let err = app_state(&config).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("rsyncserver.logfile"), "{err}");
    }
}
