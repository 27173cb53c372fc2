//! The job routes: list, read, cancel, and follow a job as server-sent events. A user
//! sees only their own jobs unless listed in `rsyncserver.admins`; someone else's job
//! answers 404, as if it did not exist.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::auth::AuthUser;
use super::response::error_response;
use super::router::RSYNC_PATH;
use super::state::AppState;
use crate::jobs::{CancelError, JobFilter, JobManager, JobRecord, JobState};

/// Jobs per page when the caller does not say.
const DEFAULT_LIMIT: usize = 50;
/// Most jobs per page.
const MAX_LIMIT: usize = 500;
/// Shortest gap between two progress events of one stream: a browser needs no more,
/// and a 1 GiB blob would otherwise send one event per network chunk.
const EVENT_GAP: Duration = Duration::from_millis(250);

/// The path of job `id`.
pub fn job_path(id: i64) -> String {
    format!("{RSYNC_PATH}/jobs/{id}")
}

/// A job as the API shows it: the record plus links.
#[derive(Debug, Serialize)]
pub struct JobView {
    /// The job.
    #[serde(flatten)]
    pub job: JobRecord,
    /// Where to read and follow it.
    pub links: JobLinks,
}

/// Links of one job.
#[derive(Debug, Serialize)]
pub struct JobLinks {
    /// The job itself.
    #[serde(rename = "self")]
    pub this: String,
    /// Its server-sent events.
    pub events: String,
}

impl JobView {
    /// Wraps `job` with its links.
    pub fn new(job: JobRecord) -> Self {
        let this = job_path(job.id);
        let events = format!("{this}/events");
        Self {
            job,
            links: JobLinks { this, events },
        }
    }
}

impl JobView {
    /// The job for a listing: its result without the log lines and per-image results,
    /// which can run to megabytes for an all-tags sync; `GET` the job for them.
    pub fn summary(mut job: JobRecord) -> Self {
        if let Some(data) = job
            .result
            .as_mut()
            .and_then(|r| r.get_mut("rsync_data"))
            .and_then(Value::as_object_mut)
        {
            data.remove("rsync_info");
            data.remove("images");
        }
        Self::new(job)
    }
}

/// `GET /v1/image/rsync/jobs`: a page of jobs, newest first.
#[derive(Debug, Serialize)]
pub struct JobPage {
    /// The jobs of this page.
    pub jobs: Vec<JobView>,
    /// The next (older) page, when this one is full.
    pub next: Option<String>,
}

/// `GET /v1/image/rsync/jobs?state=&user=&since=&before=&limit=`.
pub async fn list_jobs(
    State(state): State<AppState>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = query else {
        return error_response(StatusCode::BAD_REQUEST, "the query string cannot be read");
    };
    let filter = match list_filter(&params, &user, state.is_admin(&user)) {
        Ok(filter) => filter,
        Err((status, message)) => return error_response(status, message),
    };
    let limit = filter.limit;
    match state.jobs().list(filter).await {
        Ok(jobs) => {
            let next = (jobs.len() == limit)
                .then(|| jobs.last().map(|j| next_page(&params, j.id)))
                .flatten();
            let jobs = jobs.into_iter().map(JobView::summary).collect();
            Json(JobPage { jobs, next }).into_response()
        }
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/image/rsync/jobs/{id}`.
pub async fn get_job(
    State(state): State<AppState>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(id): Path<String>,
) -> Response {
    match visible_job(&state, &user, &id).await {
        Ok(job) => Json(JobView::new(job)).into_response(),
        Err(response) => response,
    }
}

/// `DELETE /v1/image/rsync/jobs/{id}`: cancels a queued or running job. Answers with the
/// job as it is at that moment (still `running` until its transfers have stopped).
pub async fn cancel_job(
    State(state): State<AppState>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(id): Path<String>,
) -> Response {
    let job = match visible_job(&state, &user, &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    match state.jobs().cancel(job.id, &user).await {
        Ok(job) => (StatusCode::ACCEPTED, Json(JobView::new(job))).into_response(),
        Err(CancelError::NotFound) => no_such_job(&id),
        Err(CancelError::Finished(done)) => error_response(
            StatusCode::CONFLICT,
            format!(
                "job {id} has already ended ({}); nothing to cancel",
                done.as_str()
            ),
        ),
        Err(CancelError::Store(e)) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// `GET /v1/image/rsync/jobs/{id}/events`: `progress` events while the job runs (at most
/// one per 250 ms, each the whole job), then one `done` event with the final job.
pub async fn job_events(
    State(state): State<AppState>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(id): Path<String>,
) -> Response {
    let job = match visible_job(&state, &user, &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let phase = match state.jobs().watch(job.id) {
        Some(rx) => Phase::Live { rx, first: true },
        None if job.state.is_final() => Phase::Ended(Box::new(job.clone())),
        // Unfinished but not run here: another replica holds it.
        None => Phase::Stored { last: None },
    };
    let stream = events(state.jobs().clone(), job.id, phase);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

enum Phase {
    Live {
        rx: watch::Receiver<JobRecord>,
        first: bool,
    },
    Ended(Box<JobRecord>),
    /// A job another replica runs: its row is read every [`STORED_GAP`] (the holder
    /// saves progress about once a second).
    Stored {
        last: Option<Box<JobRecord>>,
    },
    Closed,
}

/// How often a stream follows a job that another replica runs.
const STORED_GAP: Duration = Duration::from_millis(500);

fn events(
    jobs: JobManager,
    id: i64,
    phase: Phase,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(phase, move |phase| {
        let jobs = jobs.clone();
        async move {
            match phase {
                Phase::Closed => None,
                Phase::Ended(job) => Some((Ok(event("done", *job)), Phase::Closed)),
                Phase::Stored { last } => loop {
                    let job = jobs.get(id).await.ok().flatten()?;
                    if job.state.is_final() {
                        return Some((Ok(event("done", job)), Phase::Closed));
                    }
                    if last.as_deref() != Some(&job) {
                        let next = Phase::Stored {
                            last: Some(Box::new(job.clone())),
                        };
                        return Some((Ok(event("progress", job)), next));
                    }
                    tokio::time::sleep(STORED_GAP).await;
                },
                Phase::Live { mut rx, first } => {
                    if !first {
                        tokio::time::sleep(EVENT_GAP).await;
                        if rx.changed().await.is_err() {
                            // The job left the live set; its final record is in the store.
                            let job = jobs.get(id).await.ok().flatten()?;
                            return Some((Ok(event("done", job)), Phase::Closed));
                        }
                    }
                    let job = rx.borrow_and_update().clone();
                    if job.state.is_final() {
                        Some((Ok(event("done", job)), Phase::Closed))
                    } else {
                        Some((Ok(event("progress", job)), Phase::Live { rx, first: false }))
                    }
                }
            }
        }
    })
}

fn event(name: &str, job: JobRecord) -> Event {
    let data = serde_json::to_string(&JobView::new(job)).unwrap_or_default();
    Event::default().event(name).data(data)
}

/// The job `id` if `user` may see it; else the 404 to answer.
async fn visible_job(state: &AppState, user: &str, id: &str) -> Result<JobRecord, Response> {
    let Ok(number) = id.parse::<i64>() else {
        return Err(no_such_job(id));
    };
    match state.jobs().get(number).await {
        Ok(Some(job)) if job.user == user || state.is_admin(user) => Ok(job),
        Ok(_) => Err(no_such_job(id)),
        Err(e) => Err(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

fn no_such_job(id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no job {id:?} of yours: GET {RSYNC_PATH}/jobs lists your jobs"),
    )
}

type QueryError = (StatusCode, String);

/// Reads the listing's query parameters; unknown ones are refused so typos show.
fn list_filter(
    params: &BTreeMap<String, String>,
    user: &str,
    admin: bool,
) -> Result<JobFilter, QueryError> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let mut filter = JobFilter {
        user: (!admin).then(|| user.to_owned()),
        limit: DEFAULT_LIMIT,
        ..JobFilter::default()
    };
    for (key, value) in params {
        match key.as_str() {
            "state" => {
                filter.state = Some(JobState::parse(value).ok_or_else(|| {
                    let names: Vec<_> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                    bad(format!("state={value:?}: use one of {}", names.join(", ")))
                })?);
            }
            "user" if admin => filter.user = Some(value.clone()),
            "user" if value == user => {}
            "user" => {
                return Err((
                    StatusCode::FORBIDDEN,
                    "only admins (rsyncserver.admins) see other users' jobs".into(),
                ))
            }
            "since" => filter.since = Some(parse_since(value).map_err(bad)?),
            "before" => {
                filter.before_id = Some(value.parse().map_err(|_| {
                    bad(format!(
                        "before={value:?}: give a job id (the `next` link does)"
                    ))
                })?);
            }
            "limit" => {
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("limit={value:?}: give 1 to {MAX_LIMIT}")))?;
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?}: use state, user, since, before, limit"
                )))
            }
        }
    }
    Ok(filter)
}

/// `since`: RFC 3339 (`2026-11-29T10:00:00Z`) or Unix seconds.
fn parse_since(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(seconds) = value.parse::<i64>() {
        return DateTime::from_timestamp(seconds, 0)
            .ok_or_else(|| format!("since={value:?}: out of range"));
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            format!("since={value:?}: give RFC 3339 (2026-11-29T10:00:00Z) or Unix seconds")
        })
}

fn next_page(params: &BTreeMap<String, String>, last_id: i64) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("static URL parses");
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params.iter().filter(|(k, _)| k.as_str() != "before") {
            query.append_pair(k, v);
        }
        query.append_pair("before", &last_id.to_string());
    }
    format!("{RSYNC_PATH}/jobs?{}", url.query().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn listing_parameters_are_checked() {
        let f = list_filter(&params(&[]), "ci", false).unwrap();
        assert_eq!(f.user.as_deref(), Some("ci"), "a user sees only their jobs");
        assert_eq!(f.limit, DEFAULT_LIMIT);
        let f = list_filter(&params(&[]), "root", true).unwrap();
        assert_eq!(f.user, None, "an admin sees everyone's");
        let f = list_filter(
            &params(&[
                ("state", "running"),
                ("since", "1700000000"),
                ("limit", "5"),
            ]),
            "ci",
            false,
        )
        .unwrap();
        assert_eq!(f.state, Some(JobState::Running));
        assert_eq!(f.since.unwrap().timestamp(), 1_700_000_000);
        for (bad, status) in [
            (("state", "done"), StatusCode::BAD_REQUEST),
            (("limit", "0"), StatusCode::BAD_REQUEST),
            (("limit", "501"), StatusCode::BAD_REQUEST),
            (("since", "yesterday"), StatusCode::BAD_REQUEST),
            (("before", "x"), StatusCode::BAD_REQUEST),
            (("colour", "red"), StatusCode::BAD_REQUEST),
            (("user", "someone-else"), StatusCode::FORBIDDEN),
        ] {
            let err = list_filter(&params(&[bad]), "ci", false).unwrap_err();
            assert_eq!(err.0, status, "{bad:?}: {}", err.1);
        }
    }

    #[test]
    fn next_page_keeps_the_filter() {
        let next = next_page(&params(&[("state", "failed"), ("before", "9")]), 4);
        assert_eq!(next, "/v1/image/rsync/jobs?state=failed&before=4");
    }
}
