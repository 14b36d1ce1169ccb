//! `/auth/*` and the JWKS. Rate limits: every auth request takes a token from
//! the client IP's bucket; register/login/device also from the account's
//! (username, email or device id) bucket.

use super::{Body, Caller, Shared};
use crate::auth::accounts::{AuthError, TokenPair};
use crate::auth::tokens::PublicJwk;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use utoipa::ToSchema;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/device", post(device))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/.well-known/jwks.json", get(jwks))
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid { field, message } => ApiError::invalid(field, message),
            AuthError::UsernameTaken => {
                ApiError::conflict("username_taken", "username: already taken")
            }
            AuthError::EmailTaken => ApiError::conflict("email_taken", "email: already registered"),
            AuthError::BadCredentials => {
                ApiError::unauthorized("invalid_credentials", e.to_string())
            }
            AuthError::BadRefresh => ApiError::unauthorized("invalid_refresh_token", e.to_string()),
            AuthError::RefreshReused => {
                ApiError::unauthorized("refresh_token_reused", e.to_string())
            }
            AuthError::NotYours => ApiError::forbidden(e.to_string()),
            AuthError::Unavailable(m) => ApiError::unavailable("unavailable", m, 2),
            AuthError::Replicating(m) => ApiError::unavailable("unavailable", m, 1),
            AuthError::Store(e) => ApiError::internal(e),
            AuthError::Internal(e) => ApiError::internal(e),
        }
    }
}

fn limit(state: &Shared, key: &str, per_min: u32) -> Result<(), ApiError> {
    state
        .limiter
        .check(key, per_min)
        .map_err(ApiError::rate_limited)
}

fn limit_ip(state: &Shared, addr: &SocketAddr) -> Result<(), ApiError> {
    limit(
        state,
        &format!("ip:{}", addr.ip()),
        state.cfg.rate_limits.auth_per_ip_per_min,
    )
}

fn limit_account(state: &Shared, account: &str) -> Result<(), ApiError> {
    let key = format!("acct:{}", account.trim().to_lowercase());
    limit(state, &key, state.cfg.rate_limits.auth_per_account_per_min)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    pub email: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuthResponse {
    pub player_id: String,
    pub username: String,
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

fn auth_response(username: String, t: TokenPair) -> AuthResponse {
    AuthResponse {
        player_id: t.player_id,
        username,
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        token_type: t.token_type,
        expires_in: t.expires_in,
    }
}

#[utoipa::path(post, path = "/auth/register", request_body = RegisterRequest,
    responses((status = 201, body = AuthResponse), (status = 400), (status = 409), (status = 429)))]
pub async fn register(
    State(state): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Body(req): Body<RegisterRequest>,
) -> Result<(StatusCode, Json<AuthResponse>), ApiError> {
    limit_ip(&state, &addr)?;
    limit_account(&state, &req.username)?;
    let (account, tokens) = state
        .accounts
        .register(&req.username, &req.password, req.email.as_deref())
        .await?;
    metrics::counter!("accounts_registered_total").increment(1);
    Ok((
        StatusCode::CREATED,
        Json(auth_response(account.username, tokens)),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username or email.
    pub username: Option<String>,
    pub email: Option<String>,
    pub password: String,
}

#[utoipa::path(post, path = "/auth/login", request_body = LoginRequest,
    responses((status = 200, body = AuthResponse), (status = 401), (status = 429)))]
pub async fn login(
    State(state): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Body(req): Body<LoginRequest>,
) -> Result<Json<AuthResponse>, ApiError> {
    let identifier = match (&req.username, &req.email) {
        (Some(u), None) => u,
        (None, Some(e)) => e,
        _ => {
            return Err(ApiError::invalid(
                "username",
                "give exactly one of username or email",
            ))
        }
    };
    limit_ip(&state, &addr)?;
    limit_account(&state, identifier)?;
    let (account, tokens) = state.accounts.login(identifier, &req.password).await?;
    Ok(Json(auth_response(account.username, tokens)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    pub device_id: String,
}

#[utoipa::path(post, path = "/auth/device", request_body = DeviceRequest,
    responses((status = 200, body = AuthResponse, description = "existing guest"), (status = 201, body = AuthResponse, description = "new guest")))]
pub async fn device(
    State(state): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Body(req): Body<DeviceRequest>,
) -> Result<(StatusCode, Json<AuthResponse>), ApiError> {
    limit_ip(&state, &addr)?;
    limit_account(&state, &format!("device:{}", req.device_id))?;
    let (account, tokens, created) = state.accounts.device(&req.device_id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(auth_response(account.username, tokens))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[utoipa::path(post, path = "/auth/refresh", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, description = "unknown, expired, revoked or reused (reuse revokes the login)")))]
pub async fn refresh(
    State(state): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Body(req): Body<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    limit_ip(&state, &addr)?;
    Ok(Json(state.accounts.refresh(&req.refresh_token).await?))
}

#[utoipa::path(post, path = "/auth/logout", request_body = RefreshRequest,
    responses((status = 204), (status = 401), (status = 403)), security(("bearer" = [])))]
pub async fn logout(
    State(state): State<Shared>,
    caller: Caller,
    Body(req): Body<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    let player = caller.player()?;
    state.accounts.logout(player, &req.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<PublicJwk>,
}

#[utoipa::path(get, path = "/.well-known/jwks.json", responses((status = 200, body = Jwks)))]
pub async fn jwks(State(state): State<Shared>) -> Json<Jwks> {
    Json(Jwks {
        keys: state.accounts.keys().jwks(),
    })
}
