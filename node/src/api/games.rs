//! Matchmaking routes, the `/ws` push channel, and admin views of sessions
//! and the queue. The work is in [`crate::games`].

use super::{AdminCaller, Body, Caller, Query, Shared};
use crate::error::ApiError;
use crate::games::{GameSession, GamesError, QueueEntry, TicketView};
use crate::matchmaking::{CancelError, JoinError};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// WebSocket sessions held at once by this node; more get 503.
pub const WS_CONNECTIONS_MAX: usize = 200_000;
/// Largest message a client may send on `/ws`.
pub const WS_MESSAGE_MAX_BYTES: usize = 4096;
/// Read and write buffer of one `/ws` socket.
pub const WS_BUFFER_BYTES: usize = 4096;
/// Unsent bytes one `/ws` socket may hold before it is closed (slow client).
pub const WS_WRITE_BUFFER_MAX_BYTES: usize = 256 * 1024;
/// Party members besides the requester.
pub const PARTY_MAX: usize = 16;

static WS_OPEN: AtomicUsize = AtomicUsize::new(0);

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/matchmaking/modes", get(modes))
        .route("/matchmaking/join", post(join))
        .route("/matchmaking/status", get(status))
        .route("/matchmaking/tickets/{ticket_id}", delete(cancel))
        .route("/ws", get(ws))
        .route("/admin/sessions", get(sessions))
        .route("/admin/matchmaking", get(queue))
}

impl From<GamesError> for ApiError {
    fn from(e: GamesError) -> Self {
        let msg = e.to_string();
        match e {
            GamesError::Join(j) => match j {
                JoinError::UnknownMode(_) => {
                    ApiError::not_found("unknown_mode", format!("game_mode: {msg}"))
                }
                JoinError::AlreadyQueued { .. } => ApiError::conflict("already_queued", msg),
                JoinError::QueueFull { .. } => ApiError::unavailable("queue_full", msg, 5),
                JoinError::NoRegionWithinLatency { .. } => {
                    ApiError::unprocessable("no_region_within_latency", format!("latencies: {msg}"))
                }
                JoinError::InvalidLatency { .. }
                | JoinError::UnknownRegion { .. }
                | JoinError::NoLatencies => {
                    ApiError::bad_request("invalid_field", format!("latencies: {msg}"))
                }
                _ => ApiError::bad_request("invalid_field", format!("party: {msg}")),
            },
            GamesError::Cancel(CancelError::NotOwner) => ApiError::forbidden(msg),
            GamesError::Cancel(CancelError::NotFound) | GamesError::UnknownTicket => {
                ApiError::not_found("unknown_ticket", msg)
            }
            GamesError::Cancel(_) => ApiError::conflict("not_searching", msg),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModeView {
    pub name: String,
    pub teams: u32,
    pub team_size: u32,
    pub players_per_match: u32,
    pub max_latency_ms: u32,
    pub max_wait_s: u64,
}

#[utoipa::path(get, path = "/matchmaking/modes", responses((status = 200, body = [ModeView])))]
pub async fn modes(State(state): State<Shared>) -> Json<Vec<ModeView>> {
    Json(
        state
            .games
            .modes()
            .iter()
            .map(|m| ModeView {
                name: m.name.clone(),
                teams: m.teams,
                team_size: m.team_size,
                players_per_match: m.players_per_match(),
                max_latency_ms: m.max_latency_ms,
                max_wait_s: m.max_wait_s,
            })
            .collect(),
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    pub game_mode: String,
    /// Round-trip milliseconds per region, measured against the beacons.
    pub latencies: BTreeMap<String, f64>,
    /// Other players queuing with the caller.
    #[serde(default)]
    pub party: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JoinAccepted {
    pub ticket_id: String,
    pub status: String,
}

#[utoipa::path(post, path = "/matchmaking/join", request_body = JoinBody,
    responses((status = 202, body = JoinAccepted), (status = 400), (status = 404), (status = 409), (status = 422), (status = 503)),
    security(("bearer" = [])))]
pub async fn join(
    State(state): State<Shared>,
    caller: Caller,
    Body(req): Body<JoinBody>,
) -> Result<(StatusCode, Json<JoinAccepted>), ApiError> {
    let me = Uuid::parse_str(caller.player()?).map_err(|_| ApiError::forbidden("not a player"))?;
    if req.party.len() > PARTY_MAX {
        return Err(ApiError::invalid(
            "party",
            format!("at most {PARTY_MAX} members"),
        ));
    }
    let mut players = vec![me];
    for (i, p) in req.party.iter().enumerate() {
        let id = Uuid::parse_str(p)
            .map_err(|_| ApiError::invalid(&format!("party[{i}]"), "not a player id"))?;
        if state.accounts.get(p)?.is_none() {
            return Err(ApiError::not_found(
                "player_not_found",
                format!("party[{i}]: no such player"),
            ));
        }
        players.push(id);
    }
    let ticket = state.games.join(players, &req.game_mode, &req.latencies)?;
    metrics::counter!("matchmaking_tickets_total", "mode" => req.game_mode.clone()).increment(1);
    Ok((
        StatusCode::ACCEPTED,
        Json(JoinAccepted {
            ticket_id: ticket.to_string(),
            status: "searching".into(),
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    pub ticket_id: String,
}

fn ticket_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid("ticket_id", "not a ticket id"))
}

#[utoipa::path(get, path = "/matchmaking/status", params(StatusQuery),
    responses((status = 200, body = TicketView), (status = 404)), security(("bearer" = [])))]
pub async fn status(
    State(state): State<Shared>,
    caller: Caller,
    Query(q): Query<StatusQuery>,
) -> Result<Json<TicketView>, ApiError> {
    let me = Uuid::parse_str(caller.player()?).map_err(|_| ApiError::forbidden("not a player"))?;
    Ok(Json(state.games.status(ticket_id(&q.ticket_id)?, me)?))
}

#[utoipa::path(delete, path = "/matchmaking/tickets/{ticket_id}", params(("ticket_id" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let me = Uuid::parse_str(caller.player()?).map_err(|_| ApiError::forbidden("not a player"))?;
    state.games.cancel(ticket_id(&id)?, me)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WsQuery {
    /// For clients that cannot set headers (browsers).
    pub access_token: Option<String>,
}

/// `GET /ws`: pushes `match_found`, `match_ended`, `ticket_expired` to the
/// authenticated player (Authorization header, or `?access_token=`).
pub async fn ws(
    State(state): State<Shared>,
    headers: axum::http::HeaderMap,
    Query(q): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_string)
        .or(q.access_token)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "Authorization: Bearer <token> or ?access_token= required",
            )
        })?;
    let player = match super::caller_from_token(&state, &token)? {
        Caller::Player { id } => {
            Uuid::parse_str(&id).map_err(|_| ApiError::forbidden("not a player"))?
        }
        _ => return Err(ApiError::forbidden("/ws is for players")),
    };
    if WS_OPEN.fetch_add(1, Ordering::AcqRel) >= WS_CONNECTIONS_MAX {
        WS_OPEN.fetch_sub(1, Ordering::AcqRel);
        return Err(ApiError::unavailable(
            "too_many_connections",
            "WebSocket limit reached",
            5,
        ));
    }
    let rx = state.games.push.subscribe();
    Ok(upgrade
        .max_message_size(WS_MESSAGE_MAX_BYTES)
        // Pushes are small JSON messages: tungstenite's 128 KiB default
        // buffers per socket would cost ~130 KB per idle connection.
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .max_write_buffer_size(WS_WRITE_BUFFER_MAX_BYTES)
        .on_upgrade(move |socket| ws_session(socket, player, rx)))
}

async fn ws_session(
    mut socket: WebSocket,
    player: Uuid,
    mut rx: tokio::sync::broadcast::Receiver<crate::games::Push>,
) {
    metrics::gauge!("ws_connections").increment(1.0);
    let hello = serde_json::json!({"type": "hello", "player_id": player});
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_ok()
    {
        loop {
            tokio::select! {
                push = rx.recv() => match push {
                    Ok(p) if p.player_id == player => {
                        if socket.send(Message::Text(p.event.to_string().into())).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        metrics::counter!("ws_pushes_lagged_total").increment(n);
                    }
                    Err(_) => break,
                },
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {} // pings are answered by axum; other input is ignored
                },
            }
        }
    }
    WS_OPEN.fetch_sub(1, Ordering::AcqRel);
    metrics::gauge!("ws_connections").decrement(1.0);
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AdminListQuery {
    pub limit: Option<usize>,
}

/// Rows in one admin list.
pub const ADMIN_LIST_MAX: usize = 1000;

fn admin_limit(q: &AdminListQuery) -> Result<usize, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > ADMIN_LIST_MAX {
        return Err(ApiError::invalid(
            "limit",
            format!("must be 1..={ADMIN_LIST_MAX}"),
        ));
    }
    Ok(limit)
}

#[utoipa::path(get, path = "/admin/sessions", params(AdminListQuery),
    responses((status = 200, body = [GameSession])), security(("bearer" = [])))]
pub async fn sessions(
    State(state): State<Shared>,
    _admin: AdminCaller,
    Query(q): Query<AdminListQuery>,
) -> Result<Json<Vec<GameSession>>, ApiError> {
    Ok(Json(state.games.sessions(admin_limit(&q)?)))
}

#[utoipa::path(get, path = "/admin/matchmaking", params(AdminListQuery),
    responses((status = 200, body = [QueueEntry])), security(("bearer" = [])))]
pub async fn queue(
    State(state): State<Shared>,
    _admin: AdminCaller,
    Query(q): Query<AdminListQuery>,
) -> Result<Json<Vec<QueueEntry>>, ApiError> {
    Ok(Json(state.games.queue(admin_limit(&q)?)))
}
