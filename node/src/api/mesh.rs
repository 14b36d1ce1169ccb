//! `GET /admin/mesh`: this node's view of the region mesh;
//! `GET /admin/replication`: CRDT sync counters and per-peer cursors.

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
