//! Leaderboards and player stats over the delta-CRDT engine
//! (`meridian_replication::leaderboard`). Every node serves ranks from its
//! own in-memory index; scores come only from servers and admins.

use super::{AdminCaller, Body, Caller, Query, Shared};
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_replication::leaderboard::{
    BoardDef, Entry, LeaderboardError, Page, PlayerStats, StatUpdate,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/leaderboards", get(list))
        .route("/leaderboards/{name}", get(read))
        .route("/leaderboards/{name}/scores", post(submit))
        .route("/leaderboards/{name}/players/{player_id}", get(player_rank))
        .route("/admin/leaderboards", post(add_board))
        .route("/player/{player_id}/stats", post(update_stats))
}

impl From<LeaderboardError> for ApiError {
    fn from(e: LeaderboardError) -> Self {
        let msg = match e.field() {
            Some(f) => format!("{f}: {e}"),
            None => e.to_string(),
        };
        match e {
            LeaderboardError::UnknownBoard { .. } => ApiError::not_found("unknown_board", msg),
            LeaderboardError::Erased { .. } => ApiError::not_found("player_erased", msg),
            LeaderboardError::BoardExists { .. } => ApiError::conflict("board_exists", msg),
            LeaderboardError::ScoreOutOfBounds { .. } => {
                ApiError::bad_request("score_out_of_bounds", msg)
            }
            LeaderboardError::OutOfRange { .. }
            | LeaderboardError::Invalid { .. }
            | LeaderboardError::Overflow { .. } => ApiError::bad_request("invalid_field", msg),
            LeaderboardError::TooManyBoards
            | LeaderboardError::StatsFull { .. }
            | LeaderboardError::TooManyPlayers => ApiError::unprocessable("limit_exceeded", msg),
            other => ApiError::internal(other),
        }
    }
}

fn player_uuid(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid(field, "not a player id (UUID)"))
}

#[derive(Serialize, ToSchema)]
pub struct BoardsView {
    #[schema(value_type = Vec<Object>)]
    pub boards: Vec<BoardDef>,
}

#[utoipa::path(get, path = "/leaderboards", responses((status = 200, body = BoardsView)))]
pub async fn list(State(state): State<Shared>) -> Json<BoardsView> {
    Json(BoardsView {
        boards: state.leaderboards.boards(),
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Page size (1..=1000, default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// A player id: the page around them instead of from the top.
    pub around: Option<String>,
    /// Entries above and below `around` (default 5, at most 100).
    pub n: Option<usize>,
    /// Period label (`weekly-2026-W48`); default the current one.
    pub period: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EntryView {
    pub rank: u64,
    pub player_id: String,
    pub username: Option<String>,
    pub score: i64,
    /// RFC 3339.
    pub last_updated: String,
}

#[derive(Serialize, ToSchema)]
pub struct PageView {
    pub board: String,
    pub period: String,
    pub total: u64,
    pub entries: Vec<EntryView>,
    pub next_cursor: Option<String>,
}

fn entry_view(state: &Shared, e: Entry) -> EntryView {
    let player_id = e.player_id.to_string();
    let username = state.accounts.username(&player_id);
    let last_updated = chrono::DateTime::from_timestamp_millis(e.last_updated_ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    EntryView {
        rank: e.rank,
        player_id,
        username,
        score: e.score,
        last_updated,
    }
}

fn page_view(state: &Shared, p: Page) -> PageView {
    PageView {
        board: p.board,
        period: p.period,
        total: p.total,
        entries: p
            .entries
            .into_iter()
            .map(|e| entry_view(state, e))
            .collect(),
        next_cursor: p.next_offset.map(|o| o.to_string()),
    }
}

#[utoipa::path(get, path = "/leaderboards/{name}", params(("name" = String, Path), ReadQuery),
    responses((status = 200, body = PageView), (status = 400), (status = 404)))]
pub async fn read(
    State(state): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Json<PageView>, ApiError> {
    let now = chrono::Utc::now();
    let period = q.period.as_deref();
    let page = match &q.around {
        Some(p) => {
            if q.cursor.is_some() {
                return Err(ApiError::invalid(
                    "cursor",
                    "cannot be combined with around",
                ));
            }
            let player = player_uuid("around", p)?;
            state
                .leaderboards
                .around(&name, period, player, q.n.unwrap_or(5), now)?
        }
        None => {
            let offset = match &q.cursor {
                Some(c) => c
                    .parse::<usize>()
                    .map_err(|_| ApiError::invalid("cursor", "not a cursor from this endpoint"))?,
                None => 0,
            };
            state
                .leaderboards
                .top(&name, period, q.limit.unwrap_or(100), offset, now)?
        }
    };
    Ok(Json(page_view(&state, page)))
}

#[utoipa::path(get, path = "/leaderboards/{name}/players/{player_id}", params(("name" = String, Path), ("player_id" = String, Path)),
    responses((status = 200, body = EntryView), (status = 404)))]
pub async fn player_rank(
    State(state): State<Shared>,
    Path((name, player_id)): Path<(String, String)>,
) -> Result<Json<EntryView>, ApiError> {
    let player = player_uuid("player_id", &player_id)?;
    match state
        .leaderboards
        .rank(&name, None, player, chrono::Utc::now())?
    {
        Some(e) => Ok(Json(entry_view(&state, e))),
        None => Err(ApiError::not_found(
            "not_ranked",
            "player_id: no score on this board",
        )),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreBody {
    pub player_id: String,
    /// An integer within the board's bounds.
    pub score: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Submitted {
    pub board: String,
    pub period: String,
    pub score: i64,
    pub rank: u64,
    pub changed: bool,
}

fn require_server(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Player { .. } => Err(ApiError::forbidden(
            "scores and stats come from game servers and admins",
        )),
        _ => Ok(()),
    }
}

fn require_player_exists(state: &Shared, player_id: &str) -> Result<Uuid, ApiError> {
    let id = player_uuid("player_id", player_id)?;
    if state.accounts.get(player_id)?.is_none() {
        return Err(ApiError::not_found(
            "player_not_found",
            "player_id: no such player",
        ));
    }
    Ok(id)
}

#[utoipa::path(post, path = "/leaderboards/{name}/scores", params(("name" = String, Path)), request_body = ScoreBody,
    responses((status = 200, body = Submitted), (status = 400), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn submit(
    State(state): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    Body(req): Body<ScoreBody>,
) -> Result<Json<Submitted>, ApiError> {
    require_server(&caller)?;
    let player = require_player_exists(&state, &req.player_id)?;
    let s = state
        .leaderboards
        .submit(&name, player, req.score, chrono::Utc::now())
        .await?;
    Ok(Json(Submitted {
        board: name,
        period: s.period,
        score: s.score,
        rank: s.rank,
        changed: s.changed,
    }))
}

#[utoipa::path(post, path = "/admin/leaderboards", request_body = Object,
    responses((status = 201), (status = 400), (status = 409)), security(("bearer" = [])))]
pub async fn add_board(
    State(state): State<Shared>,
    _admin: AdminCaller,
    Body(def): Body<BoardDef>,
) -> Result<(StatusCode, Json<BoardDef>), ApiError> {
    state.leaderboards.add_board(def.clone()).await?;
    Ok((StatusCode::CREATED, Json(def)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsBody {
    /// e.g. `[{"xp": {"amount": 50}}, {"add": {"name": "kills", "delta": 3}},
    /// {"max": {"name": "best_streak", "value": 7}}, {"achievement": {"name": "first_win"}}]`
    #[schema(value_type = Vec<Object>)]
    pub updates: Vec<StatUpdate>,
}

#[utoipa::path(post, path = "/player/{player_id}/stats", params(("player_id" = String, Path)), request_body = StatsBody,
    responses((status = 200, description = "the player's stats"), (status = 403)), security(("bearer" = [])))]
pub async fn update_stats(
    State(state): State<Shared>,
    caller: Caller,
    Path(player_id): Path<String>,
    Body(req): Body<StatsBody>,
) -> Result<Json<PlayerStats>, ApiError> {
    require_server(&caller)?;
    let player = require_player_exists(&state, &player_id)?;
    Ok(Json(
        state
            .leaderboards
            .update_stats(player, &req.updates, chrono::Utc::now())
            .await?,
    ))
}

/// Boards used when the config defines none.
pub fn default_boards() -> Vec<BoardDef> {
    let toml = r#"
[[boards]]
name = "arena"
sort = "desc"
operator = "best"
reset = "none"
min_score = 0
max_score = 1000000000

[[boards]]
name = "weekly_kills"
sort = "desc"
operator = "sum"
reset = "weekly"
min_score = 0
max_score = 1000

[[boards]]
name = "speedrun"
sort = "asc"
operator = "best"
reset = "monthly"
min_score = 1
"#;
    #[derive(Deserialize)]
    struct Boards {
        boards: Vec<BoardDef>,
    }
    toml::from_str::<Boards>(toml)
        .expect("built-in boards parse")
        .boards
}
