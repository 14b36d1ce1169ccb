//! `POST /game/telemetry` (player, server) and `GET /admin/telemetry` (admin).

use super::{AdminCaller, Body, Caller, Query, Shared};
use crate::error::ApiError;
use crate::telemetry::{EventIn, StoredEvent, TelemetryError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/game/telemetry", post(ingest))
        .route("/admin/telemetry", get(query))
}

impl From<TelemetryError> for ApiError {
    fn from(e: TelemetryError) -> Self {
        match e {
            TelemetryError::Invalid { field, message } => ApiError::invalid(&field, message),
            TelemetryError::Store(e) => ApiError::internal(e),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryBatch {
    pub events: Vec<EventIn>,
}

#[derive(Serialize, ToSchema)]
pub struct TelemetryAccepted {
    pub accepted: usize,
    pub duplicates: usize,
}

#[utoipa::path(post, path = "/game/telemetry", request_body = TelemetryBatch,
    responses((status = 202, body = TelemetryAccepted), (status = 400), (status = 413)), security(("bearer" = [])))]
pub async fn ingest(
    State(state): State<Shared>,
    caller: Caller,
    Body(batch): Body<TelemetryBatch>,
) -> Result<(StatusCode, Json<TelemetryAccepted>), ApiError> {
    let player = match &caller {
        Caller::Player { id } => Some(id.clone()),
        Caller::Server => None,
        Caller::Admin => {
            return Err(ApiError::forbidden(
                "telemetry comes from players and servers",
            ))
        }
    };
    if let Some(p) = &player {
        state
            .limiter
            .check(&format!("player:{p}"), state.cfg.rate_limits.player_per_min)
            .map_err(ApiError::rate_limited)?;
    }
    let (accepted, duplicates) = state
        .telemetry
        .ingest(&batch.events, player.as_deref())
        .await?;
    metrics::counter!("telemetry_events_accepted_total").increment(accepted as u64);
    metrics::counter!("telemetry_events_duplicate_total").increment(duplicates as u64);
    Ok((
        StatusCode::ACCEPTED,
        Json(TelemetryAccepted {
            accepted,
            duplicates,
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TelemetryQuery {
    pub player_id: Option<String>,
    pub event_type: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TelemetryPage {
    pub events: Vec<StoredEvent>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/admin/telemetry", params(TelemetryQuery),
    responses((status = 200, body = TelemetryPage), (status = 403)), security(("bearer" = [])))]
pub async fn query(
    State(state): State<Shared>,
    _admin: AdminCaller,
    Query(q): Query<TelemetryQuery>,
) -> Result<Json<TelemetryPage>, ApiError> {
    let max = state.telemetry.config().query_limit_max;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(ApiError::invalid("limit", format!("must be 1..={max}")));
    }
    let since = q
        .since
        .as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| ApiError::invalid("since", format!("not RFC 3339: {e}")))
        })
        .transpose()?;
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from this endpoint"))
        })
        .transpose()?;
    let (events, next) = state.telemetry.query(&crate::telemetry::Query {
        player_id: q.player_id,
        event_type: q.event_type,
        since,
        limit,
        cursor,
    })?;
    Ok(Json(TelemetryPage {
        events,
        next_cursor: next.map(|c| URL_SAFE_NO_PAD.encode(c)),
    }))
}
