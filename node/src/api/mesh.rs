//! `GET /admin/mesh`: this node's view of the region mesh;
//! `GET /admin/replication`: CRDT sync counters and per-peer cursors;
//! `POST /admin/drain`: take this node out of service without stopping it.

use super::{AdminCaller, Shared};
use crate::error::ApiError;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/admin/mesh", get(admin_mesh))
        .route("/admin/replication", get(admin_replication))
        .route("/admin/drain", get(drain_status).post(drain))
}

#[derive(Serialize, ToSchema)]
pub struct MeshView {
    pub node: String,
    pub region: String,
    #[schema(value_type = Vec<Object>)]
    pub members: Vec<meridian_mesh::MemberView>,
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
}

#[utoipa::path(get, path = "/admin/mesh", responses((status = 200, body = MeshView), (status = 403), (status = 503)),
    security(("bearer" = [])))]
pub async fn admin_mesh(
    State(state): State<Shared>,
    _admin: AdminCaller,
) -> Result<Json<MeshView>, ApiError> {
    state
        .with_mesh(|m| {
            let id = m.identity();
            Json(MeshView {
                node: id.node_id,
                region: id.region,
                members: m.members(),
                stats: serde_json::to_value(m.stats().snapshot()).unwrap_or_default(),
            })
        })
        .ok_or_else(|| {
            ApiError::unavailable("mesh_disabled", "the mesh is not running on this node", 5)
        })
}

#[utoipa::path(get, path = "/admin/replication", responses((status = 200, body = Object), (status = 403)),
    security(("bearer" = [])))]
pub async fn admin_replication(
    State(state): State<Shared>,
    _admin: AdminCaller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(crate::replica::view(&state)?))
}

#[derive(Serialize, ToSchema)]
pub struct DrainStatus {
    pub draining: bool,
    /// `/readyz` answers 503 (load balancers move traffic away).
    pub ready: bool,
    /// Shards this node still leads (their leadership moves with the seats).
    pub shards_led: usize,
    /// Shards whose voters, as this node sees them, still include it (a
    /// removed node may not learn its own removal; see `seats_moved`).
    pub voter_seats: usize,
    /// Every live peer confirmed this node holds no voter seat any more.
    pub seats_moved: bool,
}

fn drain_view(state: &Shared) -> DrainStatus {
    let me = state.cfg.node_name();
    DrainStatus {
        draining: state.is_draining(),
        ready: state.is_ready(),
        shards_led: state.economy.led_shards().len(),
        voter_seats: state
            .economy
            .shards()
            .iter()
            .filter(|s| s.voter_names.contains(&me))
            .count(),
        seats_moved: state
            .replica
            .seats_moved
            .load(std::sync::atomic::Ordering::Acquire),
    }
}

#[utoipa::path(get, path = "/admin/drain", responses((status = 200, body = DrainStatus), (status = 403)),
    security(("bearer" = [])))]
pub async fn drain_status(
    State(state): State<Shared>,
    _admin: AdminCaller,
) -> Result<Json<DrainStatus>, ApiError> {
    Ok(Json(drain_view(&state)))
}

/// Drain this node (idempotent): `/readyz` turns 503, no new game servers
/// are allocated (running matches finish or hit `dgs.drain_deadline_s`),
/// and its economy voter seats move to other regions. It keeps serving
/// requests until it is stopped (SIGTERM), which is then quick.
#[utoipa::path(post, path = "/admin/drain", responses((status = 202, body = DrainStatus), (status = 403)),
    security(("bearer" = [])))]
pub async fn drain(
    State(state): State<Shared>,
    _admin: AdminCaller,
) -> Result<(axum::http::StatusCode, Json<DrainStatus>), ApiError> {
    if !state.is_draining() {
        tracing::info!("drain requested over the admin API");
        state
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        state
            .ready
            .store(false, std::sync::atomic::Ordering::Release);
        {
            use meridian_dgs::orchestrator::Orchestrator;
            let deadline = std::time::Duration::from_secs(state.cfg.dgs.drain_deadline_s);
            state.games.orchestrator().drain(deadline);
        }
        let s = state.clone();
        let within = std::time::Duration::from_secs(state.cfg.economy.handoff_timeout_s);
        // Marks the node draining at once, then waits for the seats to move.
        tokio::spawn(async move {
            crate::replica::hand_off_voters(&s, within).await;
        });
        tokio::task::yield_now().await;
    }
    Ok((axum::http::StatusCode::ACCEPTED, Json(drain_view(&state))))
}
