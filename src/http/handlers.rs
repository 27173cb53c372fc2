//! Route handlers. Status codes come from [`super::response::http_status`], never from here.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Version};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Local;
use futures_util::FutureExt as _;

use super::auth::AuthUser;
use super::body::{parse_sync_request, ParsedRequest, MAX_BODY_BYTES};
use super::home;
use super::response::{
    close_connection, error_response, set_retry_after, AnalysisEntry, Health, Outcome,
    RsyncConfigEcho, SyncResponse, UsePost,
};
use super::state::AppState;
use crate::engine::{FailureKind, SyncStatus};

/// `Retry-After` of a 503 when every sync slot is taken. Syncs take seconds to minutes;
/// a CI job retrying after this long rarely finds the service still full.
pub const BUSY_RETRY_AFTER_SECONDS: u64 = 10;

/// `GET /`.
pub async fn home(State(state): State<AppState>, headers: HeaderMap) -> Html<String> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    Html(home::render(state.tools(), host))
}

/// `GET /check`: answers while the process can serve requests at all.
pub async fn health() -> Json<Health> {
    Json(Health { status: "healthy" })
}

/// `GET /v1/image/rsync`: the seed's hint for callers who forgot `-X POST`.
pub async fn rsync_hint(Extension(AuthUser(username)): Extension<AuthUser>) -> Json<UsePost> {
    Json(UsePost {
        username,
        error: "use POST to sync an image",
    })
}

/// `POST /v1/image/rsync`: reads the body, runs the sync, answers in the seed's shape.
///
/// Auth has already passed (middleware), so every answer from here, bad body included,
/// is logged as a sync.
pub async fn rsync(
    State(state): State<AppState>,
    Extension(AuthUser(username)): Extension<AuthUser>,
    version: Version,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Local::now();
    let request = match read_request(body) {
        Ok(request) => request,
        Err((outcome, message, echo)) => {
            let answer = SyncResponse::rejected(username, echo, outcome, message, start);
            record(&state, &answer);
            let mut response = answer.into_response();
            if outcome == Outcome::BodyTooLarge {
                // Reading stopped at the cap; the rest of the body is still on the wire.
                close_connection(&mut response, version);
            }
            return response;
        }
    };
    // Scopes before anything else: a refused request contacts no registry.
    if let Err(message) = state.scopes().check(&username, &request.request) {
        tracing::warn!(user = %username, refusal = ?message, "sync refused by scope");
        let outcome = Outcome::Sync {
            status: SyncStatus::Unusual,
            failure: Some(FailureKind::NotAllowed),
        };
        let answer = SyncResponse::rejected(username, request.echo, outcome, message, start);
        record(&state, &answer);
        return answer.into_response();
    }
    // A slot for the whole sync, taken now or never: a full service answers at once
    // instead of queueing callers without bound.
    let Ok(slot) = state.sync_slots().clone().try_acquire_owned() else {
        let max = state.max_concurrent_syncs();
        let answer = SyncResponse::rejected(
            username,
            request.echo,
            Outcome::Busy,
            format!(
                "the service is busy: it already runs its maximum of {max} syncs at once \
                 (rsyncserver.max_concurrent_syncs); retry in {BUSY_RETRY_AFTER_SECONDS} s"
            ),
            start,
        );
        record(&state, &answer);
        let mut response = answer.into_response();
        set_retry_after(&mut response, Duration::from_secs(BUSY_RETRY_AFTER_SECONDS));
        return response;
    };
    let echo = request.echo.clone();
    let task_state = state.clone();
    let task_user = username.clone();
    let guard = state.syncs().start();
    // In its own task, so that a caller hanging up (which drops this future) does not
    // cancel the copy half-way; the task logs its own result either way. The slot goes
    // with it, so a sync whose caller left still counts against the cap.
    let task = tokio::spawn(async move {
        let _guard = guard;
        let _slot = slot;
        run_sync(&task_state, task_user, request).await
    });
    match task.await {
        Ok(answer) => answer.into_response(),
        // Only when the runtime itself is going away (shutdown grace period over).
        Err(_) => SyncResponse::rejected(
            username,
            echo,
            Outcome::Internal,
            "the service stopped before the sync finished; run it again",
            start,
        )
        .into_response(),
    }
}

/// Any method a route does not take; axum adds the `Allow` header.
pub async fn method_not_allowed(method: Method) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed here: the Allow header lists the methods this route takes"),
    )
}

/// Any path the router does not know.
pub async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no such route: the API is GET /check, GET|POST /v1/image/rsync (see GET /)",
    )
}

type Rejection = (Outcome, String, RsyncConfigEcho);

fn read_request(body: Result<Bytes, BytesRejection>) -> Result<ParsedRequest, Rejection> {
    let bad_input = Outcome::Sync {
        status: SyncStatus::Unusual,
        failure: Some(FailureKind::BadInput),
    };
    let bytes = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => (
            Outcome::BodyTooLarge,
            format!("request body is larger than {MAX_BODY_BYTES} bytes: send only rsync_config with source and target"),
            RsyncConfigEcho::default(),
        ),
        _ => (
            bad_input,
            "request body could not be read (connection broken?)".to_owned(),
            RsyncConfigEcho::default(),
        ),
    })?;
    parse_sync_request(&bytes).map_err(|e| (bad_input, e.message, e.echo))
}

async fn run_sync(state: &AppState, username: String, parsed: ParsedRequest) -> SyncResponse {
    let start = Local::now();
    let ParsedRequest { request, echo } = parsed;
    let sync = state.engine().run_request(&request);
    // A panic in the engine becomes a 500 for this one request instead of a dropped
    // connection, and still gets its analysis-log line.
    let response = match AssertUnwindSafe(sync).catch_unwind().await {
        Ok(report) => SyncResponse::from_report(username, echo, report),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "sync engine panicked");
            SyncResponse::rejected(
                username,
                echo,
                Outcome::Internal,
                "internal error in the sync engine: the service log has details",
                start,
            )
        }
    };
    record(state, &response);
    response
}

/// Logs one line for the sync and appends it to the analysis log.
fn record(state: &AppState, response: &SyncResponse) {
    let data = &response.rsync_data;
    // Debug formatting (`?`) quotes and escapes caller-supplied text, so a newline in a
    // reference cannot forge a log line.
    tracing::info!(
        user = %response.username,
        source = ?response.rsync_config.source,
        target = ?response.rsync_config.target.joined(),
        status = status_word(data.rsync_status),
        http_status = response.http_status().as_u16(),
        duration_s = data.duration_time_seconds,
        error = ?data.rsync_error.as_deref().unwrap_or(""),
        "sync"
    );
    if let Err(e) = state.analysis_log().append(&AnalysisEntry::new(response)) {
        tracing::error!(
            file = %state.analysis_log().path().display(),
            error = %e,
            "cannot append to the analysis log (rsyncserver.logfile)"
        );
    }
}

fn status_word(status: SyncStatus) -> &'static str {
    match status {
        SyncStatus::Successfully => "successfully",
        SyncStatus::Failed => "failed",
        SyncStatus::Unusual => "unusual",
    }
}
