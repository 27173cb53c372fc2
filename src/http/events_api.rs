//! The push-event routes: `POST /v1/events/distribution` takes distribution's
//! notification envelope, `POST /v1/events/harbor` Harbor's webhook. Only users listed in
//! `rsyncserver.events.users` may post; the answer comes as soon as the jobs are stored
//! (a registry blocks its event queue until it gets a 2xx).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::auth::AuthUser;
use super::body::{read_capped, ReadError};
use super::response::{error_response, events_status, EventsAnswer};
use super::state::AppState;
use crate::mirrors::events::{parse_distribution, parse_harbor, Announced, EnvelopeError};
use crate::mirrors::RunError;

/// distribution's events route.
pub const DISTRIBUTION_PATH: &str = "/v1/events/distribution";
/// Harbor's webhook route.
pub const HARBOR_PATH: &str = "/v1/events/harbor";

/// Largest event body read: distribution sends one event per envelope (about 1 KiB), so
/// this leaves room for batches without letting a caller fill memory.
pub const MAX_EVENT_BODY: usize = 1 << 20;

/// Why an event post was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The user may log in but not post events.
    #[error("user {0} is not in rsyncserver.events.users: only those users may post push events")]
    NotListed(String),
    /// The body is over [`MAX_EVENT_BODY`].
    #[error("the event body is larger than {MAX_EVENT_BODY} bytes")]
    TooLarge,
    /// A Content-Type that is not JSON.
    #[error("Content-Type {0:?} is not JSON: send application/vnd.docker.distribution.events.v1+json (or v2), or application/json")]
    ContentType(String),
    /// The body could not be read.
    #[error("cannot read the request body: {0}")]
    Body(String),
    /// The body is not a usable envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Acting on the events failed; the sender should send them again.
    #[error("{0}; send the events again")]
    Run(#[from] RunError),
}

/// `POST /v1/events/distribution`.
pub async fn distribution(
    State(state): State<AppState>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(receive(&state, &user, &headers, body, parse_distribution).await)
}

/// `POST /v1/events/harbor`.
pub async fn harbor(
    State(state): State<AppState>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(receive(&state, &user, &headers, body, parse_harbor).await)
}

fn answer(result: Result<EventsAnswer, EventsError>) -> Response {
    match result {
        Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
        Err(e) => {
            let status = events_status(&e);
            if status.is_server_error() {
                tracing::warn!("push events not taken: {e}");
            } else {
                tracing::info!("push events refused ({status}): {e}");
            }
            error_response(status, e.to_string())
        }
    }
}

async fn receive(
    state: &AppState,
    user: &str,
    headers: &HeaderMap,
    body: Body,
    parse: fn(&[u8]) -> Result<Vec<Announced>, EnvelopeError>,
) -> Result<EventsAnswer, EventsError> {
    if !state.may_post_events(user) {
        return Err(EventsError::NotListed(user.to_owned()));
    }
    if let Some(kind) = headers.get(header::CONTENT_TYPE) {
        let text = String::from_utf8_lossy(kind.as_bytes()).into_owned();
        let essence = text.split(';').next().unwrap_or_default().trim();
        if !essence.to_ascii_lowercase().ends_with("json") {
            return Err(EventsError::ContentType(text));
        }
    }
    // Read on past the cap (within bounds) so the sender, still writing, reads the 413
    // rather than a reset connection.
    let bytes = read_capped(headers, body, MAX_EVENT_BODY)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge { .. } => EventsError::TooLarge,
            ReadError::Broken => {
                EventsError::Body("the connection broke while it was read".to_owned())
            }
        })?;
    let announced = parse(&bytes)?;
    let events = state.mirrors().on_push(announced).await?;
    Ok(EventsAnswer::new(events))
}
