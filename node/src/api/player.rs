//! `/player/*`: public profiles, the caller's own account and profile edits.
//! A player reads any player's *public* profile; email and devices are only
//! in `/player/me`.

use super::{Body, Caller, Shared};
use crate::error::ApiError;
use crate::profiles::{ProfileError, ProfilePatch};
use axum::extract::{Path, State};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/player/{player_id}/profile", get(get_profile))
        .route("/player/me/profile", patch(patch_profile))
        .route("/player/me", get(get_me).delete(erase_me))
        .route(
            "/admin/players/{player_id}",
            axum::routing::delete(erase_player),
        )
}

/// GDPR erasure of the caller, in every region (docs/replication.md).
#[utoipa::path(delete, path = "/player/me", responses((status = 204), (status = 401)),
    security(("bearer" = [])))]
pub async fn erase_me(
    State(state): State<Shared>,
    caller: Caller,
) -> Result<axum::http::StatusCode, ApiError> {
    let id = caller.player()?.to_string();
    crate::erasure::erase(&state, &id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// GDPR erasure of a player by an operator, in every region.
#[utoipa::path(delete, path = "/admin/players/{player_id}", params(("player_id" = String, Path)),
    responses((status = 204), (status = 400), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn erase_player(
    State(state): State<Shared>,
    _admin: super::AdminCaller,
    Path(player_id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    uuid::Uuid::parse_str(&player_id)
        .map_err(|_| ApiError::invalid("player_id", "not a player id (UUID)"))?;
    if state.accounts.get(&player_id)?.is_none() && !crate::erasure::is_erased(&state, &player_id) {
        return Err(ApiError::not_found("player_not_found", "no such player"));
    }
    crate::erasure::erase(&state, &player_id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

impl From<ProfileError> for ApiError {
    fn from(e: ProfileError) -> Self {
        match e {
            ProfileError::Invalid { field, message } => ApiError::invalid(field, message),
            ProfileError::TooLarge => ApiError::unprocessable("profile_too_large", e.to_string()),
            ProfileError::Store(e) => ApiError::internal(e),
            ProfileError::Corrupt(e) => ApiError::internal(e),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PublicProfile {
    pub player_id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub avatar: Option<String>,
    pub level: u32,
    pub xp: i64,
    pub home_region: String,
    pub created_at: String,
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
}

fn valid_player_id(id: &str) -> Result<(), ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| ApiError::invalid("player_id", "not a player id (UUID)"))
}

pub(crate) fn public_profile(state: &Shared, player_id: &str) -> Result<PublicProfile, ApiError> {
    valid_player_id(player_id)?;
    let account = state
        .accounts
        .get(player_id)?
        .ok_or_else(|| ApiError::not_found("player_not_found", "no such player"))?;
    let fields = state.profiles.get(player_id)?;
    let progress = super::ops::progress(state, player_id)?;
    Ok(PublicProfile {
        player_id: account.player_id,
        username: account.username,
        display_name: fields.display_name,
        avatar: fields.avatar,
        level: progress.level,
        xp: progress.xp,
        home_region: account.home_region,
        created_at: account.created_at,
        stats: progress.stats,
    })
}

#[utoipa::path(get, path = "/player/{player_id}/profile",
    params(("player_id" = String, Path)), responses((status = 200, body = PublicProfile), (status = 404)),
    security(("bearer" = [])))]
pub async fn get_profile(
    State(state): State<Shared>,
    _caller: Caller,
    Path(player_id): Path<String>,
) -> Result<Json<PublicProfile>, ApiError> {
    Ok(Json(public_profile(&state, &player_id)?))
}

/// `null` clears a field; an absent field is left alone.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatchRequest {
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub avatar: Option<Option<String>>,
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
}

#[utoipa::path(patch, path = "/player/me/profile", request_body = ProfilePatchRequest,
    responses((status = 200, body = PublicProfile), (status = 400)), security(("bearer" = [])))]
pub async fn patch_profile(
    State(state): State<Shared>,
    caller: Caller,
    Body(req): Body<ProfilePatchRequest>,
) -> Result<Json<PublicProfile>, ApiError> {
    let player = caller.player()?.to_string();
    if req.display_name.is_none() && req.avatar.is_none() && req.settings.is_none() {
        return Err(ApiError::bad_request(
            "empty_patch",
            "give at least one of display_name, avatar, settings",
        ));
    }
    let patch = ProfilePatch {
        display_name: req.display_name,
        avatar: req.avatar,
        settings: req.settings,
    };
    state.profiles.patch(&player, &patch).await?;
    Ok(Json(public_profile(&state, &player)?))
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    #[serde(flatten)]
    pub profile: PublicProfile,
    pub email: Option<String>,
    pub auth_provider_id: String,
    /// Hashes of linked device ids (the raw ids are never stored).
    pub linked_devices: Vec<String>,
    pub last_login: String,
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
}

#[utoipa::path(get, path = "/player/me", responses((status = 200, body = Me)), security(("bearer" = [])))]
pub async fn get_me(State(state): State<Shared>, caller: Caller) -> Result<Json<Me>, ApiError> {
    let player = caller.player()?;
    let profile = public_profile(&state, player)?;
    let account = state
        .accounts
        .get(player)?
        .ok_or_else(|| ApiError::not_found("player_not_found", "no such player"))?;
    let fields = state.profiles.get(player)?;
    Ok(Json(Me {
        profile,
        email: account.email,
        auth_provider_id: account.auth_provider_id,
        linked_devices: account.devices,
        last_login: account.last_login,
        settings: fields.settings,
    }))
}
