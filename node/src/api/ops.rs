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
        super::player::erase_me, super::player::erase_player,
        super::telemetry::ingest, super::telemetry::query,
        healthz, readyz, regions, super::mesh::admin_mesh, super::mesh::admin_replication,
        super::mesh::drain, super::mesh::drain_status,
        super::economy::wallet, super::economy::inventory, super::economy::catalog, super::economy::purchase,
        super::economy::grant, super::economy::transfer, super::economy::consume, super::economy::equip,
        super::economy::transactions, super::economy::create_intent, super::economy::webhook, super::economy::shards,
        super::leaderboards::list, super::leaderboards::read, super::leaderboards::player_rank, super::leaderboards::submit,
        super::leaderboards::add_board, super::leaderboards::update_stats,
        super::games::modes, super::games::join, super::games::status, super::games::cancel,
        super::games::sessions, super::games::queue,
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

pub fn progress(state: &Shared, player_id: &str) -> Result<Progress, ApiError> {
    let id = uuid::Uuid::parse_str(player_id)
        .map_err(|_| ApiError::invalid("player_id", "not a player id (UUID)"))?;
    let s = state.leaderboards.player_stats(id)?;
    Ok(Progress {
        level: s.level,
        xp: s.xp.min(i64::MAX as u64) as i64,
        stats: serde_json::json!({
            "counters": s.counters,
            "maxima": s.maxima,
            "achievements": s.achievements,
            "next_level_xp": s.next_level_xp,
        }),
    })
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub region: String,
    /// The release label (config `release`, Terraform's `release_version`).
    pub release: String,
    /// The binary's version.
    pub version: &'static str,
}

fn health(state: &Shared, status: &'static str) -> Health {
    Health {
        status,
        region: state.region.name.clone(),
        release: state.release().to_string(),
        version: env!("CARGO_PKG_VERSION"),
    }
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<Shared>) -> Json<Health> {
    Json(health(&state, "ok"))
}

#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Health), (status = 503)))]
pub async fn readyz(State(state): State<Shared>) -> Result<Json<Health>, ApiError> {
    if state.is_ready() {
        Ok(Json(health(&state, "ready")))
    } else {
        Err(ApiError::unavailable(
            "not_ready",
            "starting up or draining",
            1,
        ))
    }
}

pub async fn metrics_text(State(state): State<Shared>) -> impl IntoResponse {
    state.with_mesh(crate::cluster::export_metrics);
    let stats = state.games.orchestrator().game_server().map(|g| g.stats());
    if let Some(Ok(v)) = stats.map(serde_json::to_value) {
        for (k, v) in v.as_object().into_iter().flatten() {
            if let Some(n) = v.as_u64() {
                metrics::gauge!("dgs_stat", "counter" => k.clone()).set(n as f64);
            }
        }
    }
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
    /// `self` for the answering node; others from the mesh: `alive`,
    /// `suspect`, `down`, or `unknown` (no member seen).
    pub status: String,
    /// Load of the region's node, 0.0..=1.0, from mesh metadata.
    pub load: Option<f32>,
    /// Smoothed RTT from this node to that region over QUIC.
    pub rtt_ms: Option<f64>,
}

#[utoipa::path(get, path = "/regions", responses((status = 200, body = [RegionView])))]
pub async fn regions(State(state): State<Shared>) -> Json<Vec<RegionView>> {
    let me = &state.region;
    let members = state.with_mesh(|m| m.members()).unwrap_or_default();
    let mut views: Vec<RegionView> = std::iter::once(me)
        .chain(state.catalog.values().filter(|r| r.name != me.name))
        .map(|r| {
            let alive = members.iter().find(|m| {
                m.region == r.name && !m.is_self && m.state == meridian_mesh::MemberState::Alive
            });
            let meta = alive.and_then(|m| m.metadata.clone());
            RegionView {
                region: r.name.clone(),
                display_name: r.display_name.clone(),
                api_url: meta
                    .as_ref()
                    .map(|m| m.api_url.clone())
                    .unwrap_or_else(|| r.api_url()),
                game_host: r.public_host.clone(),
                game_port: meta.as_ref().map(|m| m.game_port).unwrap_or(r.ports.game),
                beacon: meta
                    .as_ref()
                    .and_then(|m| m.beacon_addr)
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| format!("{}:{}", r.public_host, r.ports.beacon)),
                status: crate::cluster::region_status(&members, &r.name, &me.name),
                load: meta.as_ref().map(|m| m.load),
                rtt_ms: alive.and_then(|m| m.rtt_ms),
            }
        })
        .collect();
    // Regions seen in the mesh but missing from this node's catalog.
    for m in members
        .iter()
        .filter(|m| !m.is_self && m.state == meridian_mesh::MemberState::Alive)
    {
        if views.iter().any(|v| v.region == m.region) {
            continue;
        }
        if let Some(meta) = &m.metadata {
            views.push(RegionView {
                region: m.region.clone(),
                display_name: m.region.clone(),
                api_url: meta.api_url.clone(),
                game_host: meta.game_host.clone(),
                game_port: meta.game_port,
                beacon: meta.beacon_addr.map(|b| b.to_string()).unwrap_or_default(),
                status: "alive".into(),
                load: Some(meta.load),
                rtt_ms: m.rtt_ms,
            });
        }
    }
    // Own region keeps its own view of the API address it serves.
    if let Some(v) = views.first_mut() {
        v.api_url = format!(
            "http://{}:{}",
            me.public_host,
            state
                .cfg
                .http_addr
                .map(|a| a.port())
                .unwrap_or(me.ports.http)
        );
        if let Some(b) = &state.beacon {
            v.beacon = format!("{}:{}", me.public_host, b.local_addr().port());
        }
        // ...and the game port it really listens on (embedded backend).
        if let Some(Ok(a)) = state
            .games
            .orchestrator()
            .game_server()
            .map(|g| g.local_addr())
        {
            v.game_port = a.port();
        }
    }
    Json(views)
}
