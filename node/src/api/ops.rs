//! Operations endpoints: health, readiness, Prometheus metrics, the OpenAPI
//! document and the region list.

use super::Shared;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/regions", get(regions))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Meridian", description = "Multiplayer game backend region node API"),
    paths(
        super::auth::register, super::auth::login, super::auth::device, super::auth::refresh,
        super::auth::logout, super::auth::jwks,
        super::player::get_profile, super::player::patch_profile, super::player::get_me,
        super::telemetry::ingest, super::telemetry::query,
        healthz, readyz, regions,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Level, XP and stats of a player (delta CRDTs in the replication crate).
pub struct Progress {
    pub level: u32,
    pub xp: i64,
    pub stats: serde_json::Value,
}

pub fn progress(_state: &Shared, _player_id: &str) -> Result<Progress, ApiError> {
    // TODO(stats): wire the stats engine.
    Ok(Progress {
        level: 1,
        xp: 0,
        stats: serde_json::json!({}),
    })
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub region: String,
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<Shared>) -> Json<Health> {
    Json(Health {
        status: "ok",
        region: state.region.name.clone(),
    })
}

#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Health), (status = 503)))]
pub async fn readyz(State(state): State<Shared>) -> Result<Json<Health>, ApiError> {
    if state.is_ready() {
        Ok(Json(Health {
            status: "ready",
            region: state.region.name.clone(),
        }))
    } else {
        Err(ApiError::unavailable(
            "not_ready",
            "starting up or draining",
            1,
        ))
    }
}

pub async fn metrics_text(State(state): State<Shared>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(Serialize, ToSchema)]
pub struct RegionView {
    pub region: String,
    pub display_name: String,
    pub api_url: String,
    pub game_host: String,
    pub game_port: u16,
    pub beacon: String,
    /// `self` for the answering node; others from the mesh.
    pub status: String,
}

#[utoipa::path(get, path = "/regions", responses((status = 200, body = [RegionView])))]
pub async fn regions(State(state): State<Shared>) -> Json<Vec<RegionView>> {
    let me = &state.region;
    let views = std::iter::once(me)
        .chain(state.catalog.values().filter(|r| r.name != me.name))
        .map(|r| RegionView {
            region: r.name.clone(),
            display_name: r.display_name.clone(),
            api_url: r.api_url(),
            game_host: r.public_host.clone(),
            game_port: r.ports.game,
            beacon: format!("{}:{}", r.public_host, r.ports.beacon),
            status: if r.name == me.name {
                "self".into()
            } else {
                "unknown".into()
            },
        })
        .collect();
    Json(views)
}
