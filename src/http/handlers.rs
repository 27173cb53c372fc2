//! Route handlers. Status codes come from [`super::response::http_status`], never from here.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Local;

use super::auth::AuthUser;
use super::body::{parse_sync_request, read_body, ParsedRequest, ReadError, MAX_BODY_BYTES};
use super::jobs_api::{job_path, JobView};
use super::response::{
    close_connection, error_response, ready_response, set_retry_after, Health, Outcome,
    RsyncConfigEcho, SyncResponse, UsePost,
};
use super::state::AppState;
use crate::engine::{FailureKind, SyncStatus};
use crate::jobs::{JobManager, NewJob, SubmitError};

/// `Retry-After` of a 503 when every sync slot is taken. Syncs take seconds to minutes;
/// a CI job retrying after this long rarely finds the service still full.
pub const BUSY_RETRY_AFTER_SECONDS: u64 = 10;

/// `GET /check`: answers while the process can serve requests at all.
pub async fn health() -> Json<Health> {
    Json(Health { status: "healthy" })
}

/// How long `GET /ready` waits for the job database before it answers 503.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /ready`: 200 while the job database answers, 503 while it cannot be reached (a
/// replica without its database cannot take, run or show jobs). Liveness is `/check`.
pub async fn ready(State(state): State<AppState>) -> Response {
    let error = match tokio::time::timeout(READY_TIMEOUT, state.jobs().ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "job database: no answer within {} s",
            READY_TIMEOUT.as_secs()
        )),
    };
    if let Some(error) = &error {
        tracing::warn!(error = %error, "not ready: the job database cannot be reached");
    }
    ready_response(error)
}

/// `GET /metrics`: the service's metrics in the Prometheus text format, for scrapers.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics().render(state.gauges());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// `GET /v1/image/rsync`: the seed's hint for callers who forgot `-X POST`.
pub async fn rsync_hint(Extension(AuthUser(username)): Extension<AuthUser>) -> Json<UsePost> {
    Json(UsePost {
        username,
        error: "use POST to sync an image",
    })
}

/// `POST /v1/image/rsync`: reads the body, creates the job, and either answers `202`
/// with the job at once (`"async": true` or `Prefer: respond-async`) or waits for its end
/// and answers in the seed's shape, as before jobs existed.
///
/// Auth has already passed (middleware), so every answer from here, bad body included,
/// is logged as a sync.
pub async fn rsync(
    State(state): State<AppState>,
    Extension(AuthUser(username)): Extension<AuthUser>,
    version: Version,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Local::now();
    let refuse = |username: String, echo, outcome, message: String| {
        let answer = SyncResponse::rejected(username, echo, outcome, message, start);
        state.recorder().record(&answer);
        answer.into_response()
    };
    let request = match read_request(&headers, body).await {
        Ok(request) => request,
        Err((outcome, message, echo)) => {
            let mut response = refuse(username, echo, outcome, message);
            if outcome == Outcome::BodyTooLarge {
                // Drained or not, a caller who sent that much is not kept: one answer, close.
                close_connection(&mut response, version);
            }
            return response;
        }
    };
    // Scopes before anything else: a refused request contacts no registry.
    if let Err(message) = state.access().scopes.check(&username, &request.request) {
        tracing::warn!(user = %username, refusal = ?message, "sync refused by scope");
        let outcome = Outcome::Sync {
            status: SyncStatus::Unusual,
            failure: Some(FailureKind::NotAllowed),
        };
        return refuse(username, request.echo, outcome, message);
    }
    if let Some(url) = &request.callback_url {
        let checked = match reqwest::Url::parse(url) {
            Ok(url) => state.jobs().check_callback(&url).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(message) = checked {
            let outcome = Outcome::Sync {
                status: SyncStatus::Unusual,
                failure: Some(FailureKind::BadInput),
            };
            return refuse(username, request.echo, outcome, message);
        }
    }
    let asynchronous = request.asynchronous || prefers_async(&headers);
    let echo = request.echo.clone();
    let new = NewJob {
        user: username.clone(),
        trigger: crate::jobs::model::Trigger::Request,
        request: request.request,
        rsync_config: serde_json::to_value(&request.echo).unwrap_or_default(),
        asynchronous,
        callback_url: request.callback_url,
        max_wait: preferred_wait(&headers),
    };
    // Every job takes a free slot or waits in the one FIFO queue (up to jobs.max_queued);
    // a synchronous caller keeps its connection open meanwhile.
    let submitted = match state.jobs().submit(new).await {
        Ok(submitted) => submitted,
        Err(e) => {
            let (outcome, message) = match e {
                SubmitError::QueueFull => (
                    Outcome::Busy,
                    format!(
                        "the service is busy: all {} sync slots are taken (rsyncserver.max_concurrent_syncs) \
                         and the job queue is full ({} jobs wait for a slot, rsyncserver.jobs.max_queued); \
                         retry in {BUSY_RETRY_AFTER_SECONDS} s",
                        state.max_concurrent_syncs(),
                        state.jobs().limits().max_queued
                    ),
                ),
                SubmitError::ShuttingDown => (
                    Outcome::Busy,
                    format!("the service is shutting down; retry in {BUSY_RETRY_AFTER_SECONDS} s"),
                ),
                SubmitError::Store(e) => (Outcome::Internal, e.to_string()),
            };
            let mut response = refuse(username, echo, outcome, message);
            if outcome == Outcome::Busy {
                set_retry_after(&mut response, Duration::from_secs(BUSY_RETRY_AFTER_SECONDS));
            }
            return response;
        }
    };
    tracing::Span::current().record("job", submitted.job.id);
    let location = job_path(submitted.job.id);
    if asynchronous {
        let mut response =
            (StatusCode::ACCEPTED, Json(JobView::new(submitted.job))).into_response();
        set_header(&mut response, header::LOCATION, &location);
        return response;
    }
    // Dropped with this handler when the caller hangs up: a job still waiting in the
    // queue is then cancelled and never runs; a running one finishes (see `abandon`).
    let mut waiting = AbandonOnDrop {
        jobs: state.jobs().clone(),
        id: Some(submitted.job.id),
    };
    let done = submitted.done.await;
    waiting.id = None;
    let mut response = match done {
        Ok(job) => {
            let status = job
                .http_status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(job.result.unwrap_or_default())).into_response()
        }
        // Only when the runtime itself is going away (shutdown grace period over).
        Err(_) => SyncResponse::rejected(
            username,
            echo,
            Outcome::Internal,
            "the service stopped before the sync finished; run it again",
            start,
        )
        .into_response(),
    };
    set_header(&mut response, header::CONTENT_LOCATION, &location);
    response
}

/// Cancels a synchronous job that still waits for a slot when its caller's request is
/// dropped (the connection closed); disarmed once the job has ended.
struct AbandonOnDrop {
    jobs: JobManager,
    id: Option<i64>,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.jobs
                .abandon(id, "its caller, who hung up while it was queued");
        }
    }
}

/// Whether the caller sent `Prefer: respond-async` (RFC 7240).
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// The caller's `Prefer: wait=N` (RFC 7240): how many seconds it waits for the answer,
/// and so the longest its sync may wait for a registry's rate limit.
fn preferred_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').parse().ok())?
        })
        .map(Duration::from_secs)
}

fn set_header(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
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
        "no such route: the API is GET /check, GET /metrics, GET|POST /v1/image/rsync and its /jobs (see GET / and GET /openapi.json)",
    )
}

type Rejection = (Outcome, String, RsyncConfigEcho);

async fn read_request(headers: &HeaderMap, body: Body) -> Result<ParsedRequest, Rejection> {
    let bad_input = Outcome::Sync {
        status: SyncStatus::Unusual,
        failure: Some(FailureKind::BadInput),
    };
    let bytes = read_body(headers, body).await.map_err(|e| match e {
        ReadError::TooLarge { .. } => (
            Outcome::BodyTooLarge,
            format!("request body is larger than {MAX_BODY_BYTES} bytes: send only rsync_config with source and target"),
            RsyncConfigEcho::default(),
        ),
        ReadError::Broken => (
            bad_input,
            "request body could not be read (connection broken?)".to_owned(),
            RsyncConfigEcho::default(),
        ),
    })?;
    parse_sync_request(&bytes).map_err(|e| (bad_input, e.message, e.echo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_wait_is_read_and_anything_else_ignored() {
        let cases: &[(&[&str], Option<u64>)] = &[
            (&["wait=5"], Some(5)),
            (&["respond-async, wait=10"], Some(10)),
            (&["handling=lenient", "Wait = \"7\""], Some(7)),
            (&["wait=soon"], None),
            (&["wait=-1"], None),
            (&["waiting=5"], None),
            (&["respond-async"], None),
            (&[], None),
        ];
        for (values, want) in cases {
            let mut headers = HeaderMap::new();
            for v in *values {
                headers.append("prefer", HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(
                preferred_wait(&headers),
                want.map(Duration::from_secs),
                "{values:?}"
            );
        }
    }
}
