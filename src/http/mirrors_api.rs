//! The mirror routes: list the configured mirrors with their last job and next run, and
//! start one now. Admins only (`rsyncserver.admins`): mirror jobs belong to no user.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::auth::AuthUser;
use super::jobs_api::JobView;
use super::response::{error_response, mirror_run_status};
use super::state::AppState;
use crate::mirrors::MirrorStatus;

/// The mirrors route.
pub const MIRRORS_PATH: &str = "/v1/mirrors";

/// `GET /v1/mirrors`.
#[derive(Debug, Serialize)]
pub struct MirrorList {
    /// Every configured mirror, in config order.
    pub mirrors: Vec<MirrorStatus>,
}

fn refuse_non_admin(state: &AppState, user: &str) -> Option<Response> {
    (!state.is_admin(user)).then(|| {
        error_response(
            StatusCode::FORBIDDEN,
            format!("user {user} is not in rsyncserver.admins: only admins see and start mirrors"),
        )
    })
}

/// `GET /v1/mirrors`: each mirror's definition, last job and next run.
pub async fn list_mirrors(
    State(state): State<AppState>,
    Extension(AuthUser(user)): Extension<AuthUser>,
) -> Response {
    if let Some(refused) = refuse_non_admin(&state, &user) {
        return refused;
    }
    Json(MirrorList {
        mirrors: state.mirrors().list().await,
    })
    .into_response()
}

/// `POST /v1/mirrors/{name}/run`: 202 and the job; 409 while a run has not ended.
pub async fn run_mirror(
    State(state): State<AppState>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(name): Path<String>,
) -> Response {
    if let Some(refused) = refuse_non_admin(&state, &user) {
        return refused;
    }
    match state.mirrors().run_now(&name).await {
        Ok(job) => {
            tracing::info!(mirror = %name, job = job.id, by = %user, "mirror run started by hand");
            (StatusCode::ACCEPTED, Json(JobView::new(job))).into_response()
        }
        Err(e) => error_response(mirror_run_status(&e), e.to_string()),
    }
}
