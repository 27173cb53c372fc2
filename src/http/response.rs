//! The JSON shapes the API answers with, and the one place where an outcome or an error
//! becomes an HTTP status code: [`http_status`] (syncs), [`mirror_run_status`] (mirror
//! runs) and [`events_status`] (push events).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use super::events_api::EventsError;
use crate::engine::{FailureKind, ImageResult, SyncReport, SyncStatus};
use crate::jobs::SubmitError;
use crate::mirrors::{EventOutcome, RunError};

/// What a sync-route response reports, reduced to what decides its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The engine ran (or the body was rejected as unusable) with this result.
    Sync {
        /// Overall status, as in `rsync_status`.
        status: SyncStatus,
        /// Why it did not succeed, when it did not.
        failure: Option<FailureKind>,
    },
    /// The request body is over the size cap.
    BodyTooLarge,
    /// No usable Basic credentials.
    Unauthenticated,
    /// Too many failed logins from the client's address: damped for a while.
    TooManyLogins,
    /// Every sync slot (`rsyncserver.max_concurrent_syncs`) is taken.
    Busy,
    /// The service itself broke (the engine panicked); not the caller's nor a registry's fault.
    Internal,
}

/// Maps an outcome to its HTTP status. Every status the API answers with, apart from the
/// router's own 404/405, is decided here.
pub fn http_status(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Sync {
            status: SyncStatus::Successfully,
            ..
        } => StatusCode::OK,
        // The failure kind is more specific than the status, so it wins when present.
        Outcome::Sync {
            failure: Some(FailureKind::BadInput),
            ..
        } => StatusCode::BAD_REQUEST,
        Outcome::Sync {
            failure: Some(FailureKind::NotAllowed),
            ..
        } => StatusCode::FORBIDDEN,
        Outcome::Sync {
            failure: Some(FailureKind::Registry),
            ..
        } => StatusCode::BAD_GATEWAY,
        Outcome::Sync {
            failure: Some(FailureKind::Cancelled),
            ..
        } => StatusCode::CONFLICT,
        Outcome::Sync {
            failure: Some(FailureKind::Busy),
            ..
        }
        | Outcome::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Outcome::Sync {
            failure: Some(FailureKind::RateLimited),
            ..
        }
        | Outcome::TooManyLogins => StatusCode::TOO_MANY_REQUESTS,
        Outcome::Sync {
            status: SyncStatus::Unusual,
            failure: None,
        } => StatusCode::BAD_REQUEST,
        Outcome::Sync {
            status: SyncStatus::Failed,
            failure: None,
        } => StatusCode::BAD_GATEWAY,
        Outcome::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Outcome::Unauthenticated => StatusCode::UNAUTHORIZED,
        Outcome::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status of a mirror run that did not start (`POST /v1/mirrors/{name}/run`, and
/// push events).
pub fn mirror_run_status(error: &RunError) -> StatusCode {
    match error {
        RunError::NotFound(_) => StatusCode::NOT_FOUND,
        RunError::Running { .. } => StatusCode::CONFLICT,
        RunError::NoTags(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RunError::Tags { .. } => StatusCode::BAD_GATEWAY,
        RunError::Submit {
            source: SubmitError::Store(_),
            ..
        } => StatusCode::INTERNAL_SERVER_ERROR,
        RunError::Submit { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The status of a refused push-event post. A 4xx tells the registry the envelope will
/// never be taken; a 5xx makes it send the envelope again.
pub fn events_status(error: &EventsError) -> StatusCode {
    match error {
        EventsError::NotListed(_) => StatusCode::FORBIDDEN,
        EventsError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        EventsError::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        EventsError::Body(_) | EventsError::Envelope(_) => StatusCode::BAD_REQUEST,
        EventsError::Run(run) => mirror_run_status(run),
    }
}

/// The answer to an accepted event post: what became of each event.
#[derive(Debug, Serialize)]
pub struct EventsAnswer {
    /// New jobs queued.
    pub queued: usize,
    /// Events that joined a job still queued for their tag.
    pub joined: usize,
    /// One entry per event and mirror concerned, in envelope order.
    pub events: Vec<EventOutcome>,
}

impl EventsAnswer {
    /// Counts the outcomes.
    pub fn new(events: Vec<EventOutcome>) -> Self {
        let count = |r: &str| events.iter().filter(|e| e.result == r).count();
        Self {
            queued: count("queued"),
            joined: count("joined"),
            events,
        }
    }
}

/// The `rsync_config` object, echoed back as the caller sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RsyncConfigEcho {
    /// Source reference or rule; empty when the body did not give a usable string.
    pub source: String,
    /// Target reference or rule (or list of them); empty when not usable.
    pub target: TargetEcho,
    /// Echoed only when the caller asked for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Echoed only when the caller gave a platform filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Echoed only when the caller gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrers: Option<bool>,
}

/// `rsync_config.target`: one reference (the seed's form) or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetEcho {
    /// A single target, echoed as a string.
    One(String),
    /// Several targets, echoed as a list.
    Many(Vec<String>),
}

impl Default for TargetEcho {
    fn default() -> Self {
        Self::One(String::new())
    }
}

impl TargetEcho {
    /// The targets joined with `, `, for log lines.
    pub fn joined(&self) -> String {
        match self {
            Self::One(t) => t.clone(),
            Self::Many(ts) => ts.join(", "),
        }
    }
}

/// The `rsync_data` object: the seed's fields plus per-image results.
#[derive(Debug, Clone, Serialize)]
pub struct RsyncData {
    /// `successfully`, `failed` or `unusual`.
    pub rsync_status: SyncStatus,
    /// One readable sentence on what failed and where; `null` on success.
    pub rsync_error: Option<String>,
    /// The sync's own log lines (logrus text format); empty when no sync ran.
    pub rsync_info: String,
    /// RFC 3339 with the local offset.
    pub start_time: String,
    /// RFC 3339 with the local offset.
    pub end_time: String,
    /// `end_time - start_time` in seconds.
    pub duration_time_seconds: f64,
    /// Failure class (`bad_input`, `not_allowed`, `registry`, `busy`, `rate_limited`, `cancelled`);
    /// `null` on success and on a 401.
    /// Not in the seed: lets CI tell "fix your request" from "retry later".
    pub failure: Option<FailureKind>,
    /// Per-image results; not in the seed.
    pub images: Vec<ImageResult>,
}

/// The answer of `POST /v1/image/rsync`, in the seed's shape, whatever happened.
#[derive(Debug, Clone, Serialize)]
pub struct SyncResponse {
    /// Status, error, log and timing.
    pub rsync_data: RsyncData,
    /// The request's source and target.
    pub rsync_config: RsyncConfigEcho,
    /// The authenticated caller; empty on a 401.
    pub username: String,
    /// Decides the HTTP status; not part of the body.
    #[serde(skip)]
    pub outcome: Outcome,
}

/// Stands in for start/end time on a 401: no sync started, and using a fixed value keeps
/// the body byte-identical for every failed login (unknown user vs wrong password).
fn no_time() -> DateTime<Local> {
    DateTime::<chrono::Utc>::UNIX_EPOCH.with_timezone(&Local)
}

impl SyncResponse {
    /// Wraps what the engine reported.
    pub fn from_report(
        username: String,
        rsync_config: RsyncConfigEcho,
        report: SyncReport,
    ) -> Self {
        let outcome = Outcome::Sync {
            status: report.status,
            failure: report.failure,
        };
        let rsync_data = RsyncData {
            rsync_status: report.status,
            rsync_error: report.error.clone(),
            duration_time_seconds: report.duration_seconds(),
            start_time: report.start_time.to_rfc3339(),
            end_time: report.end_time.to_rfc3339(),
            rsync_info: report.log,
            failure: report.failure,
            images: report.images,
        };
        Self {
            rsync_data,
            rsync_config,
            username,
            outcome,
        }
    }

    /// A request refused before any sync ran: `outcome` says why, `message` how to fix it.
    pub fn rejected(
        username: String,
        rsync_config: RsyncConfigEcho,
        outcome: Outcome,
        message: impl Into<String>,
        start: DateTime<Local>,
    ) -> Self {
        let (status, failure) = match outcome {
            Outcome::Sync { status, failure } => (status, failure),
            Outcome::Internal => (SyncStatus::Failed, None),
            Outcome::BodyTooLarge => (SyncStatus::Unusual, Some(FailureKind::BadInput)),
            // No failure class for a 401: it would add nothing the status does not say.
            Outcome::Unauthenticated => (SyncStatus::Unusual, None),
            Outcome::TooManyLogins => (SyncStatus::Unusual, Some(FailureKind::RateLimited)),
            Outcome::Busy => (SyncStatus::Unusual, Some(FailureKind::Busy)),
        };
        let end = Local::now();
        let duration = (end - start)
            .to_std()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Self {
            rsync_data: RsyncData {
                rsync_status: status,
                rsync_error: Some(message.into()),
                rsync_info: String::new(),
                start_time: start.to_rfc3339(),
                end_time: end.to_rfc3339(),
                duration_time_seconds: duration,
                failure,
                images: Vec::new(),
            },
            rsync_config,
            username,
            outcome,
        }
    }

    /// The body of a 401. Depends on nothing but `message`, so it leaks nothing about
    /// which users exist.
    pub fn unauthenticated(message: &str) -> Self {
        Self::refused_login(Outcome::Unauthenticated, message)
    }

    /// The body of an answer given before anyone authenticated (401, 429): no user, no
    /// sync, epoch times; depends on nothing but `outcome` and `message`.
    pub fn refused_login(outcome: Outcome, message: &str) -> Self {
        let mut response = Self::rejected(
            String::new(),
            RsyncConfigEcho::default(),
            outcome,
            message,
            no_time(),
        );
        response.rsync_data.start_time = no_time().to_rfc3339();
        response.rsync_data.end_time = no_time().to_rfc3339();
        response.rsync_data.duration_time_seconds = 0.0;
        response
    }

    /// The HTTP status this response is sent with.
    pub fn http_status(&self) -> StatusCode {
        http_status(self.outcome)
    }
}

impl IntoResponse for SyncResponse {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let mut response = (status, Json(self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="imagersync", charset="UTF-8""#),
            );
        }
        response
    }
}

/// One analysis-log line: the response body plus when it was written and its HTTP status.
#[derive(Debug, Serialize)]
pub struct AnalysisEntry<'a> {
    /// When the line was written, RFC 3339 with the local offset.
    pub time: String,
    /// The HTTP status the caller got (or would have got, had it stayed connected).
    pub http_status: u16,
    /// The response body.
    #[serde(flatten)]
    pub response: &'a SyncResponse,
}

impl<'a> AnalysisEntry<'a> {
    /// The entry for `response`, stamped now.
    pub fn new(response: &'a SyncResponse) -> Self {
        Self {
            time: Local::now().to_rfc3339(),
            http_status: response.http_status().as_u16(),
            response,
        }
    }
}

/// `GET /check`.
#[derive(Debug, Serialize)]
pub struct Health {
    /// Always `healthy` while the process serves requests.
    pub status: &'static str,
}

/// `GET /ready`.
#[derive(Debug, Serialize)]
pub struct Ready {
    /// `ready` while the job database answers, `unavailable` while it does not.
    pub status: &'static str,
    /// Why the job database cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer of `GET /ready`: 200 when the job database answered, else 503 with why.
pub fn ready_response(database_error: Option<String>) -> Response {
    let status = if database_error.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = Ready {
        status: if database_error.is_some() {
            "unavailable"
        } else {
            "ready"
        },
        error: database_error,
    };
    (status, Json(body)).into_response()
}

/// `GET /v1/image/rsync`: tells an authenticated caller how to use the route.
#[derive(Debug, Serialize)]
pub struct UsePost {
    /// The authenticated caller.
    pub username: String,
    /// The hint.
    pub error: &'static str,
}

/// Body of the router's own errors (404, 405), outside the sync route's seed shape.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// A JSON error answer with `status`.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// `wait` in whole seconds, rounded up, at least 1: what `Retry-After` says.
pub fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Adds `Retry-After` with [`retry_after_seconds`] of `wait`.
pub fn set_retry_after(response: &mut Response, wait: std::time::Duration) {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_seconds(wait)),
    );
}

/// True when the request announces a body (a length above zero, or chunked).
pub fn announces_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

/// Adds `Connection: close` to an HTTP/1 answer sent while the request body is still
/// (partly) unread. hyper closes such a connection rather than read an unbounded body
/// just to reuse it; saying so lets the client open a new one instead of failing on a
/// dead one. (HTTP/2 has no such header and no such problem: streams end on their own.)
pub fn close_connection(response: &mut Response, version: Version) {
    if version <= Version::HTTP_11 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(status: SyncStatus, failure: Option<FailureKind>) -> Outcome {
        Outcome::Sync { status, failure }
    }

    #[test]
    fn status_mapping() {
        use FailureKind::*;
        use SyncStatus::*;
        let cases = [
            (sync(Successfully, None), 200),
            (sync(Unusual, None), 400),
            (sync(Unusual, Some(BadInput)), 400),
            (sync(Failed, Some(BadInput)), 400),
            (sync(Unusual, Some(NotAllowed)), 403),
            (sync(Failed, Some(NotAllowed)), 403),
            (sync(Failed, Some(Registry)), 502),
            (sync(Failed, None), 502),
            (sync(Unusual, Some(Busy)), 503),
            (sync(Unusual, Some(RateLimited)), 429),
            (Outcome::BodyTooLarge, 413),
            (Outcome::Unauthenticated, 401),
            (Outcome::TooManyLogins, 429),
            (Outcome::Busy, 503),
            (Outcome::Internal, 500),
        ];
        for (outcome, code) in cases {
            assert_eq!(http_status(outcome).as_u16(), code, "{outcome:?}");
        }
    }

    #[test]
    fn mirror_and_event_errors_map_to_their_statuses() {
        use crate::mirrors::events::EnvelopeError;
        let run = |e: RunError| mirror_run_status(&e).as_u16();
        assert_eq!(run(RunError::NotFound("m".into())), 404);
        assert_eq!(
            run(RunError::Running {
                name: "m".into(),
                job: 1,
                state: "running"
            }),
            409
        );
        assert_eq!(run(RunError::NoTags("m".into())), 422);
        let tags = || RunError::Tags {
            name: "m".into(),
            cause: "x".into(),
        };
        assert_eq!(run(tags()), 502);
        let submit = |source| RunError::Submit {
            name: "m".into(),
            source,
        };
        assert_eq!(run(submit(SubmitError::QueueFull)), 503);
        assert_eq!(run(submit(SubmitError::ShuttingDown)), 503);
        let events = |e: EventsError| events_status(&e).as_u16();
        assert_eq!(events(EventsError::NotListed("u".into())), 403);
        assert_eq!(events(EventsError::TooLarge), 413);
        assert_eq!(events(EventsError::ContentType("text/plain".into())), 415);
        assert_eq!(events(EventsError::Body("cut".into())), 400);
        let envelope = EnvelopeError::Shape {
            format: "f",
            reason: "r".into(),
        };
        assert_eq!(events(EventsError::Envelope(envelope)), 400);
        assert_eq!(events(EventsError::Run(tags())), 502);
        assert_eq!(
            events(EventsError::Run(submit(SubmitError::QueueFull))),
            503
        );
    }

    #[test]
    fn every_seed_field_is_present() {
        let r = SyncResponse::rejected(
            "u".into(),
            RsyncConfigEcho::default(),
            sync(SyncStatus::Unusual, Some(FailureKind::BadInput)),
            "bad",
            Local::now(),
        );
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "rsync_status",
            "rsync_error",
            "rsync_info",
            "start_time",
            "end_time",
            "duration_time_seconds",
        ] {
            assert!(
                v["rsync_data"].get(key).is_some(),
                "missing rsync_data.{key}"
            );
        }
        assert!(v["rsync_data"]["rsync_info"].is_string());
        assert_eq!(v["rsync_data"]["rsync_status"], "unusual");
        assert!(v["rsync_config"]["source"].is_string());
        assert!(v["rsync_config"]["target"].is_string());
        assert_eq!(v["username"], "u");
        assert!(v.get("outcome").is_none());
        DateTime::parse_from_rfc3339(v["rsync_data"]["start_time"].as_str().unwrap()).unwrap();
    }

    #[test]
    fn unauthenticated_body_is_constant() {
        let a = serde_json::to_vec(&SyncResponse::unauthenticated("nope")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = serde_json::to_vec(&SyncResponse::unauthenticated("nope")).unwrap();
        assert_eq!(a, b);
        let response = SyncResponse::unauthenticated("nope").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Basic realm="imagersync", charset="UTF-8""#
        );
    }

    #[test]
    fn body_announcement() {
        let mut h = HeaderMap::new();
        assert!(!announces_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!announces_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(announces_body(&h));
        let mut chunked = HeaderMap::new();
        chunked.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(announces_body(&chunked));
    }

    #[test]
    fn analysis_entry_flattens_the_response() {
        let r = SyncResponse::unauthenticated("x");
        let v = serde_json::to_value(AnalysisEntry::new(&r)).unwrap();
        assert_eq!(v["http_status"], 401);
        assert!(v["time"].is_string());
        assert!(v["rsync_data"].is_object() && v["rsync_config"].is_object());
    }
}
