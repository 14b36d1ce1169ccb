//! The leaderboard and player-stats engine: board definitions, durable
//! submits, rank reads, and the replication hooks (`delta_since`,
//! `merge_remote`) that the cross-region layer drives.
//!
//! Every board entry is a delta-state CRDT from [`crate::crdt`] chosen by the
//! board's operator (`best` → max/min register, `latest` → LWW register,
//! `sum` → per-node PN-counter), stored under `lb/e/`, and mirrored in an
//! in-memory [`RankIndex`] per board key. Player stats (XP, counters, maxima,
//! achievements) use the same machinery under `stat/`.
//!
//! # Keys
//! - `lb/def/{name}`: boards added at runtime (JSON [`BoardDef`]).
//! - `lb/e/{board_key}\0{uuid}`: one entry (postcard), `board_key` is
//!   `{name}[@{region}]/{period}` with period `all`, `daily-2026-11-25`,
//!   `weekly-2026-W48`, `monthly-2026-11` or `cron-2026-11-20T18:00` (the
//!   most recent fire time of a cron board); past periods stay readable.
//! - `stat/{uuid}`: one player's stats (postcard).
//! - `lb/v/{version:be64}`: the change log for `delta_since`; one record per
//!   entry (an entry's older record is deleted when it changes).
//!
//! # Durability
//! `submit`, `update_stats`, `merge_remote` and `add_board` return only after
//! the write is fsynced (group commit via [`Storage::sync`]). The write is
//! applied under the engine lock without waiting for the fsync, so concurrent
//! submits share one fsync; a reader may see a score up to one fsync before
//! its submitter is acknowledged.
//!
//! Not for: HTTP, authorization, usernames (the node joins profiles), or
//! shipping deltas between nodes (the replication transport calls
//! [`LeaderboardEngine::delta_since`] / [`LeaderboardEngine::merge_remote`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc, Weekday};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crdt::{
    decode, encode, Crdt, CrdtError, GSet, Hlc, HlcClock, LwwRegister, MaxRegister, MinRegister,
    NodeId, PnCounter,
};
use crate::rank::{RankIndex, SortOrder};
use crate::store::{prefix_end, Batch, Storage, StoreError};

/// Longest board name, in bytes (`[a-z0-9_-]`).
pub const BOARD_NAME_LEN_MAX: usize = 64;
/// Longest region name, in bytes (`[a-z0-9-]`).
pub const REGION_LEN_MAX: usize = 32;
/// Longest board key (`name@region/period`) accepted from a remote delta.
pub const BOARD_KEY_LEN_MAX: usize = 128;
/// Most board definitions per engine.
pub const BOARDS_MAX: usize = 1_000;
/// Most rows per page of [`LeaderboardEngine::top`].
pub const LIMIT_MAX: usize = 1_000;
/// Largest 0-based start offset of a page.
pub const OFFSET_MAX: usize = 100_000_000;
/// Most rows above (and below) the player in [`LeaderboardEngine::around`].
pub const AROUND_MAX: usize = 100;
/// Most entries in one [`Delta`].
pub const DELTA_ENTRIES_MAX: usize = 10_000;
/// Longest stat or achievement name, in bytes (`[a-z0-9_.-]`).
pub const STAT_NAME_LEN_MAX: usize = 64;
/// Most counters plus maxima per player.
pub const STATS_PER_PLAYER_MAX: usize = 256;
/// Most achievements per player.
pub const ACHIEVEMENTS_PER_PLAYER_MAX: usize = 1_024;
/// Most updates in one [`LeaderboardEngine::update_stats`] call.
pub const STAT_UPDATES_MAX: usize = 64;
/// Largest XP award in one update.
pub const XP_AWARD_MAX: u64 = 1_000_000_000;
/// Highest level a [`LevelCurve`] may define.
pub const LEVEL_MAX: u32 = 10_000;
/// Entries read per store scan while rebuilding indexes.
const REBUILD_SCAN_BATCH: usize = 10_000;
/// Longest cron expression, in bytes.
pub const CRON_LEN_MAX: usize = 128;
/// How far back, in days before the current UTC day, the period of a cron
/// board is searched; a schedule must fire at least once in every window of
/// this many days (checked when the board is defined).
pub const CRON_LOOKBACK_DAYS: u32 = 366;
/// Days in one 400-year Gregorian cycle (dates and weekdays repeat after it).
const GREGORIAN_CYCLE_DAYS: u32 = 146_097;

const DEF_PREFIX: &[u8] = b"lb/def/";
const ENTRY_PREFIX: &[u8] = b"lb/e/";
const LOG_PREFIX: &[u8] = b"lb/v/";
const STAT_PREFIX: &[u8] = b"stat/";
/// Erased players (GDPR): `lb/x/{uuid}`. Kept forever (16 bytes of key per
/// erased player) so no replica's stale entry can bring them back.
const ERASED_PREFIX: &[u8] = b"lb/x/";
/// Most erased players loaded at open.
pub const ERASED_MAX: usize = 10_000_000;

/// Errors of the engine. Input errors name the offending field.
#[derive(Debug, thiserror::Error)]
pub enum LeaderboardError {
    #[error("unknown leaderboard {board:?}")]
    UnknownBoard { board: String },
    #[error("leaderboard {board:?} already exists with another definition")]
    BoardExists { board: String },
    #[error("too many leaderboards (max {BOARDS_MAX})")]
    TooManyBoards,
    #[error("score {score} is outside [{min:?}, {max:?}] of leaderboard {board:?}")]
    ScoreOutOfBounds {
        board: String,
        score: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    /// A numeric argument (`limit`, `offset`, `n`, `amount`) out of range.
    #[error("{field} = {value} is out of range (max {max})")]
    OutOfRange {
        field: &'static str,
        value: u64,
        max: u64,
    },
    /// A malformed argument or definition field.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A counter would overflow.
    #[error("{field} overflows")]
    Overflow { field: &'static str },
    /// A per-player stats limit was reached.
    #[error("{field}: limit of {max} reached")]
    StatsFull { field: &'static str, max: usize },
    #[error("too many players for one engine")]
    TooManyPlayers,
    /// The player's data was erased (GDPR); nothing is recorded for them.
    #[error("player {player} was erased")]
    Erased { player: Uuid },
    /// Stored or replicated bytes that do not decode.
    #[error("corrupt data at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl LeaderboardError {
    /// The input field at fault, for 400 responses (`None` for server-side errors).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::UnknownBoard { .. } | Self::BoardExists { .. } | Self::TooManyBoards => {
                Some("board")
            }
            Self::ScoreOutOfBounds { .. } => Some("score"),
            Self::OutOfRange { field, .. }
            | Self::Invalid { field, .. }
            | Self::Overflow { field }
            | Self::StatsFull { field, .. } => Some(field),
            Self::Erased { .. } => Some("player_id"),
            Self::TooManyPlayers | Self::Corrupt { .. } | Self::Storage(_) => None,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> LeaderboardError {
    LeaderboardError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> LeaderboardError {
    LeaderboardError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    }
}

/// How a new score combines with a player's entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operator {
    /// Keep the best score (max for `desc`, min for `asc`).
    #[default]
    Best,
    /// Keep the latest score (LWW by hybrid logical clock).
    Latest,
    /// Add the score to the total (per-node PN-counter).
    Sum,
}

/// When a board starts a new period (UTC; ISO weeks start on Monday).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reset {
    #[default]
    None,
    Daily,
    Weekly,
    Monthly,
    /// At every fire time of the board's [`BoardDef::cron`] expression:
    /// `minute hour day-of-month month day-of-week` in UTC, each field `*`,
    /// a number, a range `a-b`, a step `*/n` or `a-b/n`, or a list of those
    /// (`a,b-c`); day-of-week 0-7 with 0 and 7 both Sunday. As in Vixie
    /// cron, when neither day field starts with `*` a day matches if either
    /// matches, else both must.
    Cron,
}

/// Whether a board is shared by all regions or kept per region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Global,
    /// One board per region; this node submits to and reads its own region's.
    Region,
}

/// A leaderboard definition (config `[[leaderboards.boards]]` or admin API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardDef {
    /// `[a-z0-9_-]`, 1 to [`BOARD_NAME_LEN_MAX`] bytes.
    pub name: String,
    #[serde(default)]
    pub sort: SortOrder,
    #[serde(default)]
    pub operator: Operator,
    #[serde(default)]
    pub reset: Reset,
    /// The schedule of `reset = "cron"` (e.g. `"0 18 * * 5"`), at most
    /// [`CRON_LEN_MAX`] bytes; absent for the other resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default)]
    pub scope: Scope,
    /// Smallest accepted score (inclusive). For `sum`, bounds each increment.
    #[serde(default)]
    pub min_score: Option<i64>,
    /// Largest accepted score (inclusive).
    #[serde(default)]
    pub max_score: Option<i64>,
}

impl BoardDef {
    pub fn validate(&self) -> Result<(), LeaderboardError> {
        check_name("name", &self.name, BOARD_NAME_LEN_MAX, b"_-")?;
        if let (Some(min), Some(max)) = (self.min_score, self.max_score) {
            if min > max {
                return Err(invalid("min_score", "min_score is greater than max_score"));
            }
        }
        match (self.reset, &self.cron) {
            (Reset::Cron, Some(expr)) => CronSchedule::parse(expr)?.check_fires_often(expr)?,
            (Reset::Cron, None) => return Err(invalid("cron", "required with reset = \"cron\"")),
            (_, Some(_)) => return Err(invalid("cron", "only allowed with reset = \"cron\"")),
            (_, None) => {}
        }
        Ok(())
    }

    /// The label of the period containing `now`: [`period_label`] for the
    /// fixed resets, `cron-2026-11-20T18:00` (the most recent fire time at or
    /// before `now`) for a cron board.
    pub fn period_label(&self, now: DateTime<Utc>) -> Result<String, LeaderboardError> {
        match self.reset {
            Reset::Cron => {
                let (expr, schedule) = self.cron_schedule()?;
                let fire = schedule.last_fire_at_or_before(now).ok_or_else(|| {
                    invalid(
                        "cron",
                        format!(
                            "{expr:?} did not fire in the {CRON_LOOKBACK_DAYS} days before {now}"
                        ),
                    )
                })?;
                Ok(cron_label(fire))
            }
            reset => Ok(period_label(reset, now)),
        }
    }

    /// Accept only canonical period labels of this board: for a cron board,
    /// a fire time of its schedule.
    fn check_period(&self, p: &str) -> Result<(), LeaderboardError> {
        if self.reset != Reset::Cron {
            return check_period(self.reset, p);
        }
        let (expr, schedule) = self.cron_schedule()?;
        let bad = || {
            invalid(
                "period",
                format!("{p:?} is not a fire time (cron-YYYY-MM-DDTHH:MM) of {expr:?}"),
            )
        };
        let rest = p.strip_prefix("cron-").ok_or_else(bad)?;
        let at = NaiveDateTime::parse_from_str(rest, "%Y-%m-%dT%H:%M").map_err(|_| bad())?;
        if cron_label(at) != p || !schedule.matches(at) {
            return Err(bad());
        }
        Ok(())
    }

    fn cron_schedule(&self) -> Result<(&str, CronSchedule), LeaderboardError> {
        let expr = self
            .cron
            .as_deref()
            .ok_or_else(|| invalid("cron", "required with reset = \"cron\""))?;
        Ok((expr, CronSchedule::parse(expr)?))
    }

    fn check_score(&self, score: i64) -> Result<(), LeaderboardError> {
        if self.min_score.is_some_and(|m| score < m) || self.max_score.is_some_and(|m| score > m) {
            return Err(LeaderboardError::ScoreOutOfBounds {
                board: self.name.clone(),
                score,
                min: self.min_score,
                max: self.max_score,
            });
        }
        Ok(())
    }
}

/// XP needed for a level: `xp_for_level(l) = floor(base * (l - 1)^exponent)`,
/// so level 1 starts at 0 XP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelCurve {
    pub base: f64,
    pub exponent: f64,
    /// 1 to [`LEVEL_MAX`].
    pub max_level: u32,
}

impl Default for LevelCurve {
    fn default() -> Self {
        Self {
            base: 100.0,
            exponent: 1.5,
            max_level: 100,
        }
    }
}

impl LevelCurve {
    pub fn validate(&self) -> Result<(), LeaderboardError> {
        if !(self.base.is_finite() && self.base > 0.0) {
            return Err(invalid("level_curve.base", "must be finite and > 0"));
        }
        if !(self.exponent.is_finite() && self.exponent > 0.0 && self.exponent <= 10.0) {
            return Err(invalid("level_curve.exponent", "must be in (0, 10]"));
        }
        if !(1..=LEVEL_MAX).contains(&self.max_level) {
            return Err(invalid(
                "level_curve.max_level",
                format!("must be in 1..={LEVEL_MAX}"),
            ));
        }
        Ok(())
    }

    /// Total XP at which `level` starts (saturates at `u64::MAX`).
    pub fn xp_for_level(&self, level: u32) -> u64 {
        let l = f64::from(level.max(1) - 1);
        let xp = (self.base * l.powf(self.exponent)).floor();
        if xp >= u64::MAX as f64 {
            u64::MAX
        } else {
            xp as u64
        }
    }

    /// The level reached with `xp` (1 to `max_level`).
    pub fn level_for_xp(&self, xp: u64) -> u32 {
        let (mut lo, mut hi) = (1u32, self.max_level.max(1));
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.xp_for_level(mid) <= xp {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}

/// The engine's configuration section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderboardConfig {
    #[serde(default)]
    pub boards: Vec<BoardDef>,
    #[serde(default)]
    pub level_curve: LevelCurve,
}

/// The CRDT state of one board entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScoreState {
    Max(MaxRegister<i64>),
    Min(MinRegister<i64>),
    Lww(LwwRegister<i64>),
    Sum(PnCounter),
}

impl ScoreState {
    fn empty(def: &BoardDef) -> Self {
        match (def.operator, def.sort) {
            (Operator::Best, SortOrder::Desc) => Self::Max(MaxRegister::default()),
            (Operator::Best, SortOrder::Asc) => Self::Min(MinRegister::default()),
            (Operator::Latest, _) => Self::Lww(LwwRegister::default()),
            (Operator::Sum, _) => Self::Sum(PnCounter::default()),
        }
    }

    /// Apply a local submit; `Ok(true)` if the state changed.
    fn apply(&mut self, score: i64, at: Hlc) -> Result<bool, LeaderboardError> {
        Ok(match self {
            Self::Max(r) => r.set(score, at).is_some(),
            Self::Min(r) => r.set(score, at).is_some(),
            Self::Lww(r) => r.set(score, at).is_some(),
            Self::Sum(c) => {
                c.add(score, at)
                    .map_err(|_| LeaderboardError::Overflow { field: "score" })?;
                true
            }
        })
    }

    /// Merge a replicated state; `None` if the kinds differ (a board whose
    /// operator was changed between nodes), else whether it changed.
    fn merge(&mut self, other: &Self) -> Option<bool> {
        let before = self.clone();
        match (&mut *self, other) {
            (Self::Max(a), Self::Max(b)) => a.merge(b),
            (Self::Min(a), Self::Min(b)) => a.merge(b),
            (Self::Lww(a), Self::Lww(b)) => a.merge(b),
            (Self::Sum(a), Self::Sum(b)) => a.merge(b),
            _ => return None,
        }
        Some(*self != before)
    }

    /// The score shown on the board.
    pub fn score(&self) -> Option<i64> {
        match self {
            Self::Max(r) => r.value().copied(),
            Self::Min(r) => r.value().copied(),
            Self::Lww(r) => r.value().copied(),
            Self::Sum(c) => (!c.shares.is_empty()).then(|| c.value_i64()),
        }
    }

    /// The stamp of the update that set the shown score.
    pub fn stamp(&self) -> Option<Hlc> {
        match self {
            Self::Max(r) => r.stamp(),
            Self::Min(r) => r.stamp(),
            Self::Lww(r) => r.stamp(),
            Self::Sum(c) => c.stamp(),
        }
    }
}

/// The CRDT state of one player's stats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsState {
    pub xp: PnCounter,
    pub counters: BTreeMap<String, PnCounter>,
    pub maxima: BTreeMap<String, MaxRegister<i64>>,
    pub achievements: GSet<String>,
}

impl StatsState {
    fn merge(&mut self, other: &Self) {
        self.xp.merge(&other.xp);
        for (k, v) in &other.counters {
            self.counters.entry(k.clone()).or_default().merge(v);
        }
        for (k, v) in &other.maxima {
            self.maxima.entry(k.clone()).or_default().merge(v);
        }
        self.achievements.merge(&other.achievements);
    }

    fn max_stamp(&self) -> Option<Hlc> {
        let a = self.xp.stamp();
        let b = self.counters.values().filter_map(|c| c.stamp()).max();
        let c = self.maxima.values().filter_map(|m| m.stamp()).max();
        let d = self.achievements.items.values().copied().max();
        [a, b, c, d].into_iter().flatten().max()
    }
}

/// One stored value: its change-log version and its state.
#[derive(Serialize, Deserialize)]
struct Stored<T> {
    version: u64,
    state: T,
}

/// A record being merged in [`LeaderboardEngine::merge_remote`].
struct Slot<T> {
    old_version: Option<u64>,
    original: Option<T>,
    state: Option<T>,
    board_key: String,
    player: Uuid,
}

impl<T: Clone> Slot<T> {
    fn new(loaded: Option<(u64, T)>, board_key: &str, player: Uuid) -> Self {
        let (old_version, original) = match loaded {
            Some((v, s)) => (Some(v), Some(s)),
            None => (None, None),
        };
        Self {
            old_version,
            state: original.clone(),
            original,
            board_key: board_key.to_string(),
            player,
        }
    }
}

/// One replicated entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaEntry {
    Score {
        board_key: String,
        player: Uuid,
        state: ScoreState,
    },
    Stats {
        player: Uuid,
        state: StatsState,
    },
}

/// A batch of entries changed on this node after some version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub entries: Vec<DeltaEntry>,
    /// The highest local version included; pass it to the next
    /// [`LeaderboardEngine::delta_since`]. Equal to the argument if empty.
    pub version: u64,
}

impl Delta {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LeaderboardError> {
        decode(bytes).map_err(|e: CrdtError| corrupt(b"delta", e))
    }
}

/// What [`LeaderboardEngine::merge_remote`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Entries that changed local state.
    pub applied: usize,
    /// Entries already known.
    pub unchanged: usize,
    /// Entries refused (malformed key, operator mismatch, over a limit).
    pub skipped: usize,
}

/// The result of a submit: the player's standing after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub board_key: String,
    pub period: String,
    /// The player's score on the board now (best, latest or total).
    pub score: i64,
    /// 1-based.
    pub rank: u64,
    /// Whether the submit changed the entry (a worse `best` does not).
    pub changed: bool,
}

/// One row of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// 1-based.
    pub rank: u64,
    pub player_id: Uuid,
    pub score: i64,
    /// Unix milliseconds of the update that set `score`.
    pub last_updated_ms: u64,
}

/// A page of a board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    pub board: String,
    pub period: String,
    /// Entries on this board key.
    pub total: u64,
    pub entries: Vec<Entry>,
    /// Offset of the next page, if there is one (the HTTP cursor).
    pub next_offset: Option<usize>,
}

/// One stat change in [`LeaderboardEngine::update_stats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StatUpdate {
    /// Add to a counter (may be negative).
    Add { name: String, delta: i64 },
    /// Raise a maximum.
    Max { name: String, value: i64 },
    /// Award XP (1 to [`XP_AWARD_MAX`]).
    Xp { amount: u64 },
    /// Unlock an achievement (idempotent).
    Achievement { name: String },
}

/// A player's stats as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlayerStats {
    pub player_id: Uuid,
    pub xp: u64,
    pub level: u32,
    /// Total XP at which the next level starts; `None` at the max level.
    pub next_level_xp: Option<u64>,
    pub counters: BTreeMap<String, i64>,
    pub maxima: BTreeMap<String, i64>,
    pub achievements: Vec<String>,
}

/// Player uuid ↔ dense `u32` for the rank indexes.
#[derive(Default)]
struct Interner {
    ids: HashMap<Uuid, u32>,
    uuids: Vec<Uuid>,
}

impl Interner {
    fn intern(&mut self, p: Uuid) -> Result<u32, LeaderboardError> {
        if let Some(id) = self.ids.get(&p) {
            return Ok(*id);
        }
        let id = u32::try_from(self.uuids.len()).map_err(|_| LeaderboardError::TooManyPlayers)?;
        self.ids.insert(p, id);
        self.uuids.push(p);
        Ok(id)
    }
    fn uuid(&self, id: u32) -> Uuid {
        self.uuids.get(id as usize).copied().unwrap_or_default()
    }
    fn bytes(&self) -> usize {
        self.ids.capacity() * (std::mem::size_of::<(Uuid, u32)>() + 1) + self.uuids.capacity() * 16
    }
}

struct Inner {
    defs: BTreeMap<String, BoardDef>,
    boards: HashMap<String, RankIndex>,
    players: Interner,
    /// Erased players: their submits and replicated entries are dropped.
    erased: std::collections::HashSet<Uuid>,
    /// Last change-log version issued.
    version: u64,
}

impl Inner {
    fn index_entry(
        &mut self,
        board_key: &str,
        player: Uuid,
        state: &ScoreState,
    ) -> Result<(), LeaderboardError> {
        let Some(name) = board_name(board_key) else {
            return Ok(());
        };
        let Some(def) = self.defs.get(name) else {
            return Ok(());
        };
        let (Some(score), Some(stamp)) = (state.score(), state.stamp()) else {
            return Ok(());
        };
        let sort = def.sort;
        let pid = self.players.intern(player)?;
        self.boards
            .entry(board_key.to_string())
            .or_insert_with(|| RankIndex::new(sort))
            .upsert(pid, score, stamp.packed(), stamp.node as u32);
        Ok(())
    }
}

/// The leaderboard and stats engine of one node. Share it in an `Arc`.
pub struct LeaderboardEngine {
    storage: Storage,
    region: String,
    curve: LevelCurve,
    /// Serializes writers (read-modify-write of the store and the version
    /// counter) without blocking readers; `inner` is write-locked only for
    /// the in-memory index update.
    writer: Mutex<()>,
    inner: RwLock<Inner>,
    clock: Mutex<HlcClock>,
}

impl LeaderboardEngine {
    /// Open the engine: load runtime-added boards, validate `config`, and
    /// rebuild every rank index from the store. Blocking (scans the store);
    /// call it from `spawn_blocking` for large stores.
    pub fn open(
        storage: Storage,
        config: &LeaderboardConfig,
        node_id: NodeId,
        region: &str,
    ) -> Result<Self, LeaderboardError> {
        check_name("region", region, REGION_LEN_MAX, b"-")?;
        config.level_curve.validate()?;
        let mut defs = BTreeMap::new();
        for (k, v) in storage.scan_prefix(DEF_PREFIX, BOARDS_MAX + 1)? {
            let def: BoardDef = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            defs.insert(def.name.clone(), def);
        }
        for def in &config.boards {
            def.validate()?;
            defs.insert(def.name.clone(), def.clone());
        }
        if defs.len() > BOARDS_MAX {
            return Err(LeaderboardError::TooManyBoards);
        }
        let version = match storage
            .range_rev(LOG_PREFIX, prefix_end(LOG_PREFIX).as_deref(), 1)?
            .first()
        {
            Some((k, _)) => parse_log_key(k).ok_or_else(|| corrupt(k, "bad log key"))?,
            None => 0,
        };
        let erased = storage
            .scan_prefix(ERASED_PREFIX, ERASED_MAX)?
            .iter()
            .filter_map(|(k, _)| Uuid::from_slice(&k[ERASED_PREFIX.len()..]).ok())
            .collect();
        let engine = Self {
            storage,
            region: region.to_string(),
            curve: config.level_curve.clone(),
            inner: RwLock::new(Inner {
                defs,
                boards: HashMap::new(),
                players: Interner::default(),
                erased,
                version,
            }),
            writer: Mutex::new(()),
            clock: Mutex::new(HlcClock::new(node_id)),
        };
        engine.rebuild(ENTRY_PREFIX)?;
        Ok(engine)
    }

    /// Index every stored entry under `prefix` (all of `lb/e/` at open, one
    /// board's entries when it is added).
    fn rebuild(&self, prefix: &[u8]) -> Result<(), LeaderboardError> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut newest: Option<Hlc> = None;
        loop {
            let chunk = self
                .storage
                .range(&from, end.as_deref(), REBUILD_SCAN_BATCH)?;
            let mut inner = self.write();
            for (k, v) in &chunk {
                let (board_key, player) =
                    parse_entry_key(k).ok_or_else(|| corrupt(k, "bad entry key"))?;
                let stored: Stored<ScoreState> = decode(v).map_err(|e| corrupt(k, e))?;
                newest = newest.max(stored.state.stamp());
                inner.index_entry(board_key, player, &stored.state)?;
            }
            drop(inner);
            match chunk.last() {
                Some((k, _)) if chunk.len() == REBUILD_SCAN_BATCH => {
                    from = k.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        // Stamps issued after a restart order after every stored one, even
        // if the wall clock stepped back meanwhile.
        if let Some(h) = newest {
            let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = c.observe(h, unix_ms(Utc::now())) {
                tracing::warn!(error = %e, "stored leaderboard stamp ahead of local clock");
            }
        }
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stamp(&self, now: DateTime<Utc>) -> Hlc {
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        c.now(unix_ms(now))
    }

    /// Board definitions, by name.
    pub fn boards(&self) -> Vec<BoardDef> {
        self.read().defs.values().cloned().collect()
    }

    /// Add a board at runtime (admin API). Persisted; adding the identical
    /// definition again is a no-op.
    pub async fn add_board(&self, def: BoardDef) -> Result<(), LeaderboardError> {
        def.validate()?;
        {
            let _w = self.writer();
            {
                let inner = self.read();
                match inner.defs.get(&def.name) {
                    Some(d) if *d == def => return Ok(()),
                    Some(_) => return Err(LeaderboardError::BoardExists { board: def.name }),
                    None if inner.defs.len() >= BOARDS_MAX => {
                        return Err(LeaderboardError::TooManyBoards)
                    }
                    None => {}
                }
            }
            let mut key = DEF_PREFIX.to_vec();
            key.extend_from_slice(def.name.as_bytes());
            let json = serde_json::to_vec(&def).map_err(|e| invalid("board", e.to_string()))?;
            let mut batch = Batch::new();
            batch.require_absent(key.clone()).put(key, json);
            match self.storage.commit_nosync(&batch) {
                Err(StoreError::Conflict(_)) => {
                    return Err(LeaderboardError::BoardExists { board: def.name })
                }
                other => other?,
            }
            let mut prefix = ENTRY_PREFIX.to_vec();
            prefix.extend_from_slice(def.name.as_bytes());
            self.write().defs.insert(def.name.clone(), def);
            // Entries that arrived by replication before the definition;
            // writers are held off so none of them is indexed stale.
            self.rebuild(&prefix)?;
        }
        self.storage.sync().await?;
        Ok(())
    }

    /// Submit a score; durable before it returns.
    pub async fn submit(
        &self,
        board: &str,
        player: Uuid,
        score: i64,
        now: DateTime<Utc>,
    ) -> Result<Submitted, LeaderboardError> {
        let result = {
            let _w = self.writer();
            if self.read().erased.contains(&player) {
                return Err(LeaderboardError::Erased { player });
            }
            let def = self
                .read()
                .defs
                .get(board)
                .ok_or_else(|| LeaderboardError::UnknownBoard {
                    board: board.to_string(),
                })?
                .clone();
            def.check_score(score)?;
            let period = def.period_label(now)?;
            let board_key = make_board_key(&def, &self.region, &period);
            let key = entry_key(&board_key, player);
            let (old_version, mut state) = match self.storage.get(&key)? {
                Some(v) => {
                    let s: Stored<ScoreState> = decode(&v).map_err(|e| corrupt(&key, e))?;
                    (Some(s.version), s.state)
                }
                None => (None, ScoreState::empty(&def)),
            };
            let changed = state.apply(score, self.stamp(now))?;
            if changed {
                let version = self.read().version + 1;
                let mut batch = Batch::new();
                batch.put(
                    key.clone(),
                    encode(&Stored {
                        version,
                        state: &state,
                    }),
                );
                log_ops(&mut batch, old_version, version, &key);
                self.storage.commit_nosync(&batch)?;
                let mut inner = self.write();
                inner.version = version;
                inner.index_entry(&board_key, player, &state)?;
            }
            let inner = self.read();
            let rank = inner
                .players
                .ids
                .get(&player)
                .and_then(|pid| inner.boards.get(&board_key)?.get(*pid))
                .map_or(0, |e| e.rank);
            Submitted {
                board_key,
                period,
                score: state.score().unwrap_or(score),
                rank,
                changed,
            }
        };
        // Also when unchanged: the state we read may be a concurrent
        // submit's that is not durable yet.
        self.storage.sync().await?;
        Ok(result)
    }

    /// Resolve a board name and optional period label to its board key.
    fn resolve(
        &self,
        inner: &Inner,
        board: &str,
        period: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(String, String), LeaderboardError> {
        let def = inner
            .defs
            .get(board)
            .ok_or_else(|| LeaderboardError::UnknownBoard {
                board: board.to_string(),
            })?;
        let period = match period {
            Some(p) => {
                def.check_period(p)?;
                p.to_string()
            }
            None => def.period_label(now)?,
        };
        let key = make_board_key(def, &self.region, &period);
        Ok((period, key))
    }

    fn to_entries(inner: &Inner, rows: Vec<crate::rank::RankedEntry>) -> Vec<Entry> {
        rows.into_iter()
            .map(|r| Entry {
                rank: r.rank,
                player_id: inner.players.uuid(r.player),
                score: r.score,
                last_updated_ms: r.tiebreak >> 16,
            })
            .collect()
    }

    /// A page of the board: `limit` (1 to [`LIMIT_MAX`]) rows from 0-based
    /// `offset` (up to [`OFFSET_MAX`]); `period` `None` = the current one.
    pub fn top(
        &self,
        board: &str,
        period: Option<&str>,
        limit: usize,
        offset: usize,
        now: DateTime<Utc>,
    ) -> Result<Page, LeaderboardError> {
        check_range("limit", limit, 1, LIMIT_MAX)?;
        check_range("offset", offset, 0, OFFSET_MAX)?;
        let inner = self.read();
        let (period, key) = self.resolve(&inner, board, period, now)?;
        let (rows, total) = match inner.boards.get(&key) {
            Some(idx) => (idx.top(offset, limit), idx.len()),
            None => (Vec::new(), 0),
        };
        let next = offset + rows.len();
        Ok(Page {
            board: board.to_string(),
            period,
            total: total as u64,
            entries: Self::to_entries(&inner, rows),
            next_offset: (next < total && next <= OFFSET_MAX).then_some(next),
        })
    }

    /// Up to `n` (0 to [`AROUND_MAX`]) rows above and below the player;
    /// empty if the player has no entry.
    pub fn around(
        &self,
        board: &str,
        period: Option<&str>,
        player: Uuid,
        n: usize,
        now: DateTime<Utc>,
    ) -> Result<Page, LeaderboardError> {
        check_range("n", n, 0, AROUND_MAX)?;
        let inner = self.read();
        let (period, key) = self.resolve(&inner, board, period, now)?;
        let idx = inner.boards.get(&key);
        let rows = match (idx, inner.players.ids.get(&player)) {
            (Some(idx), Some(pid)) => idx.around(*pid, n),
            _ => Vec::new(),
        };
        Ok(Page {
            board: board.to_string(),
            period,
            total: idx.map_or(0, |i| i.len() as u64),
            entries: Self::to_entries(&inner, rows),
            next_offset: None,
        })
    }

    /// The player's row, or `None` without an entry.
    pub fn rank(
        &self,
        board: &str,
        period: Option<&str>,
        player: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Entry>, LeaderboardError> {
        let inner = self.read();
        let (_, key) = self.resolve(&inner, board, period, now)?;
        let row = match (inner.boards.get(&key), inner.players.ids.get(&player)) {
            (Some(idx), Some(pid)) => idx.get(*pid),
            _ => None,
        };
        Ok(row.and_then(|r| Self::to_entries(&inner, vec![r]).pop()))
    }

    /// Number of entries on the board in the period.
    pub fn count(
        &self,
        board: &str,
        period: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<u64, LeaderboardError> {
        let inner = self.read();
        let (_, key) = self.resolve(&inner, board, period, now)?;
        Ok(inner.boards.get(&key).map_or(0, |i| i.len() as u64))
    }

    /// Approximate bytes held by the rank indexes and the player interner.
    pub fn memory_bytes(&self) -> usize {
        let inner = self.read();
        inner.players.bytes()
            + inner
                .boards
                .values()
                .map(RankIndex::memory_bytes)
                .sum::<usize>()
    }

    /// Erase a player (GDPR): delete their score on every indexed board and
    /// their stats, and drop their later submits and replicated entries for
    /// good (the erased mark is never deleted). Durable before it returns;
    /// returns how many records were deleted. Idempotent.
    pub async fn erase_player(&self, player: Uuid) -> Result<usize, LeaderboardError> {
        let deleted = {
            let _w = self.writer();
            let board_keys: Vec<String> = self.read().boards.keys().cloned().collect();
            let mut batch = Batch::new();
            let mut boards = Vec::new();
            for bk in board_keys {
                let k = entry_key(&bk, player);
                if let Some((v, _)) = self.load::<ScoreState>(&k)? {
                    batch.delete(k).delete(log_key(v));
                    boards.push(bk);
                }
            }
            let sk = stat_key(player);
            let mut deleted = boards.len();
            if let Some((v, _)) = self.load::<StatsState>(&sk)? {
                batch.delete(sk).delete(log_key(v));
                deleted += 1;
            }
            let mut mark = ERASED_PREFIX.to_vec();
            mark.extend_from_slice(player.as_bytes());
            batch.put(mark, Vec::new());
            self.storage.commit_nosync(&batch)?;
            let mut inner = self.write();
            inner.erased.insert(player);
            if let Some(pid) = inner.players.ids.get(&player).copied() {
                for bk in &boards {
                    if let Some(ix) = inner.boards.get_mut(bk) {
                        ix.remove(pid);
                    }
                }
            }
            deleted
        };
        self.storage.sync().await?;
        Ok(deleted)
    }

    /// Whether the player was erased.
    pub fn is_erased(&self, player: Uuid) -> bool {
        self.read().erased.contains(&player)
    }

    /// The highest local change version (the cursor a replica pulls from).
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Entries changed on this node (locally or by merge) after `version`,
    /// at most `limit` (clamped to 1..=[`DELTA_ENTRIES_MAX`]), oldest first.
    pub fn delta_since(&self, version: u64, limit: usize) -> Result<Delta, LeaderboardError> {
        let limit = limit.clamp(1, DELTA_ENTRIES_MAX);
        // Only versions whose commit finished: a scan racing a commit could
        // otherwise see version v+1 but miss v, and the caller's cursor
        // would skip v for good.
        let committed = self.read().version;
        let from = log_key(version.saturating_add(1));
        let end = log_key(committed.saturating_add(1));
        let mut delta = Delta {
            entries: Vec::new(),
            version,
        };
        if version >= committed {
            return Ok(delta);
        }
        for (k, target) in self.storage.range(&from, Some(&end), limit)? {
            let v = parse_log_key(&k).ok_or_else(|| corrupt(&k, "bad log key"))?;
            delta.version = delta.version.max(v);
            // The entry may have changed again since; its newest state is
            // what we ship (and it appears again later in the log).
            let Some(bytes) = self.storage.get(&target)? else {
                continue;
            };
            if let Some((board_key, player)) = parse_entry_key(&target) {
                let s: Stored<ScoreState> = decode(&bytes).map_err(|e| corrupt(&target, e))?;
                delta.entries.push(DeltaEntry::Score {
                    board_key: board_key.to_string(),
                    player,
                    state: s.state,
                });
            } else if let Some(player) = parse_stat_key(&target) {
                let s: Stored<StatsState> = decode(&bytes).map_err(|e| corrupt(&target, e))?;
                delta.entries.push(DeltaEntry::Stats {
                    player,
                    state: s.state,
                });
            } else {
                return Err(corrupt(&target, "log points at an unknown key"));
            }
        }
        Ok(delta)
    }

    /// Merge replicated entries; durable before it returns. Malformed or
    /// mismatched entries are skipped (counted), never fatal.
    pub async fn merge_remote(
        &self,
        delta: &Delta,
        now: DateTime<Utc>,
    ) -> Result<MergeReport, LeaderboardError> {
        if delta.entries.len() > DELTA_ENTRIES_MAX {
            return Err(LeaderboardError::OutOfRange {
                field: "entries",
                value: delta.entries.len() as u64,
                max: DELTA_ENTRIES_MAX as u64,
            });
        }
        let mut report = MergeReport::default();
        {
            let _w = self.writer();
            let mut scores: BTreeMap<Vec<u8>, Slot<ScoreState>> = BTreeMap::new();
            let mut stats: BTreeMap<Vec<u8>, Slot<StatsState>> = BTreeMap::new();
            let mut newest: Option<Hlc> = None;
            for e in &delta.entries {
                match e {
                    DeltaEntry::Score {
                        board_key,
                        player,
                        state,
                    } => {
                        if !valid_board_key(board_key)
                            || !self.kind_fits(board_key, state)
                            || self.read().erased.contains(player)
                        {
                            report.skipped += 1;
                            continue;
                        }
                        let key = entry_key(board_key, *player);
                        let slot = match scores.entry(key) {
                            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                            std::collections::btree_map::Entry::Vacant(v) => {
                                let loaded = self.load::<ScoreState>(v.key())?;
                                v.insert(Slot::new(loaded, board_key, *player))
                            }
                        };
                        let outcome = match &mut slot.state {
                            None => {
                                slot.state = Some(state.clone());
                                Some(true)
                            }
                            Some(cur) => cur.merge(state),
                        };
                        match outcome {
                            None => report.skipped += 1,
                            Some(false) => report.unchanged += 1,
                            Some(true) => {
                                report.applied += 1;
                                newest = newest.max(state.stamp());
                            }
                        }
                    }
                    DeltaEntry::Stats { player, state } => {
                        if self.read().erased.contains(player) {
                            report.skipped += 1;
                            continue;
                        }
                        let key = stat_key(*player);
                        let slot = match stats.entry(key) {
                            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                            std::collections::btree_map::Entry::Vacant(v) => {
                                let loaded = self.load::<StatsState>(v.key())?;
                                v.insert(Slot::new(loaded, "", *player))
                            }
                        };
                        let mut merged = slot.state.clone().unwrap_or_default();
                        merged.merge(state);
                        if !stats_within_limits(&merged) {
                            report.skipped += 1;
                        } else if slot.state.as_ref() == Some(&merged) {
                            report.unchanged += 1;
                        } else {
                            report.applied += 1;
                            newest = newest.max(state.max_stamp());
                            slot.state = Some(merged);
                        }
                    }
                }
            }
            let mut batch = Batch::new();
            let mut version = self.read().version;
            let mut changed_scores = Vec::new();
            for (key, slot) in scores {
                let Some(state) = slot.state.filter(|s| Some(s) != slot.original.as_ref()) else {
                    continue;
                };
                version += 1;
                batch.put(
                    key.clone(),
                    encode(&Stored {
                        version,
                        state: &state,
                    }),
                );
                log_ops(&mut batch, slot.old_version, version, &key);
                changed_scores.push((slot.board_key, slot.player, state));
            }
            for (key, slot) in stats {
                let Some(state) = slot.state.filter(|s| Some(s) != slot.original.as_ref()) else {
                    continue;
                };
                version += 1;
                batch.put(
                    key.clone(),
                    encode(&Stored {
                        version,
                        state: &state,
                    }),
                );
                log_ops(&mut batch, slot.old_version, version, &key);
            }
            if !batch.is_empty() {
                self.storage.commit_nosync(&batch)?;
                let mut inner = self.write();
                inner.version = version;
                for (board_key, player, state) in &changed_scores {
                    inner.index_entry(board_key, *player, state)?;
                }
            }
            if let Some(h) = newest {
                let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = c.observe(h, unix_ms(now)) {
                    tracing::warn!(error = %e, "remote leaderboard stamp ahead of local clock");
                }
            }
        }
        self.storage.sync().await?;
        Ok(report)
    }

    /// Whether a replicated state has the CRDT kind of its board's local
    /// definition (unknown boards accept any kind until defined).
    fn kind_fits(&self, board_key: &str, state: &ScoreState) -> bool {
        let inner = self.read();
        match board_name(board_key).and_then(|n| inner.defs.get(n)) {
            Some(def) => {
                std::mem::discriminant(&ScoreState::empty(def)) == std::mem::discriminant(state)
            }
            None => true,
        }
    }

    /// Read a stored record: `(version, state)`.
    fn load<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<(u64, T)>, LeaderboardError> {
        match self.storage.get(key)? {
            Some(v) => {
                let s: Stored<T> = decode(&v).map_err(|e| corrupt(key, e))?;
                Ok(Some((s.version, s.state)))
            }
            None => Ok(None),
        }
    }

    /// Apply stat updates for one player atomically; durable before it
    /// returns. Returns the stats after the update.
    pub async fn update_stats(
        &self,
        player: Uuid,
        updates: &[StatUpdate],
        now: DateTime<Utc>,
    ) -> Result<PlayerStats, LeaderboardError> {
        check_range("updates", updates.len(), 1, STAT_UPDATES_MAX)?;
        for u in updates {
            match u {
                StatUpdate::Add { name, .. } | StatUpdate::Max { name, .. } => {
                    check_name("name", name, STAT_NAME_LEN_MAX, b"_.-")?
                }
                StatUpdate::Achievement { name } => {
                    check_name("achievement", name, STAT_NAME_LEN_MAX, b"_.-")?
                }
                StatUpdate::Xp { amount } => {
                    check_range("amount", *amount as usize, 1, XP_AWARD_MAX as usize)?;
                }
            }
        }
        let view = {
            let _w = self.writer();
            if self.read().erased.contains(&player) {
                return Err(LeaderboardError::Erased { player });
            }
            let key = stat_key(player);
            let (old_version, mut state) = match self.storage.get(&key)? {
                Some(v) => {
                    let s: Stored<StatsState> = decode(&v).map_err(|e| corrupt(&key, e))?;
                    (Some(s.version), s.state)
                }
                None => (None, StatsState::default()),
            };
            let before = state.clone();
            for u in updates {
                let at = self.stamp(now);
                match u {
                    StatUpdate::Add { name, delta } => {
                        if !state.counters.contains_key(name)
                            && state.counters.len() + state.maxima.len() >= STATS_PER_PLAYER_MAX
                        {
                            return Err(LeaderboardError::StatsFull {
                                field: "name",
                                max: STATS_PER_PLAYER_MAX,
                            });
                        }
                        let c = state.counters.entry(name.clone()).or_default();
                        c.add(*delta, at)
                            .map_err(|_| LeaderboardError::Overflow { field: "delta" })?;
                    }
                    StatUpdate::Max { name, value } => {
                        if !state.maxima.contains_key(name)
                            && state.counters.len() + state.maxima.len() >= STATS_PER_PLAYER_MAX
                        {
                            return Err(LeaderboardError::StatsFull {
                                field: "name",
                                max: STATS_PER_PLAYER_MAX,
                            });
                        }
                        state
                            .maxima
                            .entry(name.clone())
                            .or_default()
                            .set(*value, at);
                    }
                    StatUpdate::Xp { amount } => {
                        let amount = i64::try_from(*amount)
                            .map_err(|_| LeaderboardError::Overflow { field: "amount" })?;
                        state
                            .xp
                            .add(amount, at)
                            .map_err(|_| LeaderboardError::Overflow { field: "amount" })?;
                    }
                    StatUpdate::Achievement { name } => {
                        if !state.achievements.contains(name)
                            && state.achievements.len() >= ACHIEVEMENTS_PER_PLAYER_MAX
                        {
                            return Err(LeaderboardError::StatsFull {
                                field: "achievement",
                                max: ACHIEVEMENTS_PER_PLAYER_MAX,
                            });
                        }
                        state.achievements.insert(name.clone(), at);
                    }
                }
            }
            if state != before {
                let version = self.read().version + 1;
                let mut batch = Batch::new();
                batch.put(
                    key.clone(),
                    encode(&Stored {
                        version,
                        state: &state,
                    }),
                );
                log_ops(&mut batch, old_version, version, &key);
                self.storage.commit_nosync(&batch)?;
                self.write().version = version;
            }
            self.view(player, &state)
        };
        self.storage.sync().await?;
        Ok(view)
    }

    /// A player's stats (all zero/empty for an unknown player).
    pub fn player_stats(&self, player: Uuid) -> Result<PlayerStats, LeaderboardError> {
        let key = stat_key(player);
        let state = match self.storage.get(&key)? {
            Some(v) => {
                decode::<Stored<StatsState>>(&v)
                    .map_err(|e| corrupt(&key, e))?
                    .state
            }
            None => StatsState::default(),
        };
        Ok(self.view(player, &state))
    }

    fn view(&self, player: Uuid, s: &StatsState) -> PlayerStats {
        let xp = u64::try_from(s.xp.value().max(0)).unwrap_or(u64::MAX);
        let level = self.curve.level_for_xp(xp);
        PlayerStats {
            player_id: player,
            xp,
            level,
            next_level_xp: (level < self.curve.max_level)
                .then(|| self.curve.xp_for_level(level + 1)),
            counters: s
                .counters
                .iter()
                .map(|(k, c)| (k.clone(), c.value_i64()))
                .collect(),
            maxima: s
                .maxima
                .iter()
                .filter_map(|(k, m)| m.value().map(|v| (k.clone(), *v)))
                .collect(),
            achievements: s.achievements.items.keys().cloned().collect(),
        }
    }
}

fn stats_within_limits(s: &StatsState) -> bool {
    s.counters.len() + s.maxima.len() <= STATS_PER_PLAYER_MAX
        && s.achievements.len() <= ACHIEVEMENTS_PER_PLAYER_MAX
        && s.counters
            .keys()
            .chain(s.maxima.keys())
            .chain(s.achievements.items.keys())
            .all(|n| check_name("name", n, STAT_NAME_LEN_MAX, b"_.-").is_ok())
}

fn unix_ms(now: DateTime<Utc>) -> u64 {
    u64::try_from(now.timestamp_millis()).unwrap_or(0)
}

fn check_range(
    field: &'static str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), LeaderboardError> {
    if !(min..=max).contains(&value) {
        return Err(LeaderboardError::OutOfRange {
            field,
            value: value as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// `[a-z0-9]` plus `extra`, 1 to `max` bytes.
fn check_name(
    field: &'static str,
    s: &str,
    max: usize,
    extra: &[u8],
) -> Result<(), LeaderboardError> {
    if s.is_empty() || s.len() > max {
        return Err(invalid(field, format!("must be 1 to {max} bytes")));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
    {
        return Err(invalid(
            field,
            format!(
                "only a-z, 0-9 and {:?} are allowed",
                String::from_utf8_lossy(extra)
            ),
        ));
    }
    Ok(())
}

/// The period label of `reset` at `now`. A cron board's label depends on
/// its expression: use [`BoardDef::period_label`] (here [`Reset::Cron`]
/// gives `"cron"`, which no read accepts).
pub fn period_label(reset: Reset, now: DateTime<Utc>) -> String {
    match reset {
        Reset::None => "all".to_string(),
        Reset::Cron => "cron".to_string(),
        Reset::Daily => format!(
            "daily-{:04}-{:02}-{:02}",
            now.year(),
            now.month(),
            now.day()
        ),
        Reset::Weekly => {
            let w = now.iso_week();
            format!("weekly-{:04}-W{:02}", w.year(), w.week())
        }
        Reset::Monthly => format!("monthly-{:04}-{:02}", now.year(), now.month()),
    }
}

/// Accept only canonical labels of the board's reset kind (cron boards go
/// through [`BoardDef::check_period`]).
fn check_period(reset: Reset, p: &str) -> Result<(), LeaderboardError> {
    let bad = || invalid("period", format!("{p:?} is not a {reset:?} period label"));
    let canonical = match reset {
        Reset::None => "all".to_string(),
        Reset::Cron => return Err(bad()),
        Reset::Daily => {
            let d = p.strip_prefix("daily-").ok_or_else(bad)?;
            let date = NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| bad())?;
            format!(
                "daily-{:04}-{:02}-{:02}",
                date.year(),
                date.month(),
                date.day()
            )
        }
        Reset::Weekly => {
            let w = p.strip_prefix("weekly-").ok_or_else(bad)?;
            let (y, wk) = w.split_once("-W").ok_or_else(bad)?;
            let year: i32 = y.parse().map_err(|_| bad())?;
            let week: u32 = wk.parse().map_err(|_| bad())?;
            let date = NaiveDate::from_isoywd_opt(year, week, Weekday::Mon).ok_or_else(bad)?;
            let iw = date.iso_week();
            format!("weekly-{:04}-W{:02}", iw.year(), iw.week())
        }
        Reset::Monthly => {
            let m = p.strip_prefix("monthly-").ok_or_else(bad)?;
            let date =
                NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d").map_err(|_| bad())?;
            format!("monthly-{:04}-{:02}", date.year(), date.month())
        }
    };
    if canonical == p {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The label of a cron period: its fire time, `cron-2026-11-20T18:00`.
fn cron_label(at: NaiveDateTime) -> String {
    format!(
        "cron-{:04}-{:02}-{:02}T{:02}:{:02}",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute()
    )
}

/// A parsed 5-field cron expression (UTC, minute resolution); see
/// [`Reset::Cron`]. Each field is a bit set of its allowed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CronSchedule {
    /// Bits 0-59.
    minutes: u64,
    /// Bits 0-23.
    hours: u64,
    /// Bits 1-31.
    days: u64,
    /// Bits 1-12.
    months: u64,
    /// Bits 0-6, Sunday = 0 (7 is folded into 0).
    weekdays: u64,
    /// Whether day-of-month / day-of-week start with `*` (Vixie cron: only
    /// when neither does is a day matched by either field).
    days_star: bool,
    weekdays_star: bool,
}

impl CronSchedule {
    /// Parse the syntax. Whether the schedule fires often enough is
    /// [`Self::check_fires_often`], done once when a board is defined.
    fn parse(expr: &str) -> Result<Self, LeaderboardError> {
        if expr.len() > CRON_LEN_MAX {
            return Err(invalid(
                "cron",
                format!("must be at most {CRON_LEN_MAX} bytes"),
            ));
        }
        let fail = |reason: String| invalid("cron", format!("{expr:?}: {reason}"));
        let fields: Vec<&str> = expr.split_ascii_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(fail(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                fields.len()
            )));
        };
        let mut weekdays = cron_field(weekday, "day-of-week", 0, 7).map_err(fail)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Self {
            minutes: cron_field(minute, "minute", 0, 59).map_err(fail)?,
            hours: cron_field(hour, "hour", 0, 23).map_err(fail)?,
            days: cron_field(day, "day-of-month", 1, 31).map_err(fail)?,
            months: cron_field(month, "month", 1, 12).map_err(fail)?,
            weekdays,
            days_star: day.starts_with('*'),
            weekdays_star: weekday.starts_with('*'),
        })
    }

    /// Whether the schedule fires on a day (`weekday` 0 = Sunday).
    fn day_matches(&self, month: u32, day: u32, weekday: u32) -> bool {
        let d = self.days & (1 << day) != 0;
        let w = self.weekdays & (1 << weekday) != 0;
        self.months & (1 << month) != 0
            && if self.days_star || self.weekdays_star {
                d && w
            } else {
                d || w
            }
    }

    /// Whether `at` (seconds ignored) is a fire time.
    fn matches(&self, at: NaiveDateTime) -> bool {
        self.minutes & (1 << at.minute()) != 0
            && self.hours & (1 << at.hour()) != 0
            && self.day_matches(at.month(), at.day(), at.weekday().num_days_from_sunday())
    }

    /// The latest fire time of a matching day at or before `hour:minute`.
    fn latest_time(&self, hour: u32, minute: u32) -> Option<(u32, u32)> {
        (0..=hour).rev().find_map(|h| {
            if self.hours & (1 << h) == 0 {
                return None;
            }
            let limit = if h == hour { minute } else { 59 };
            let minutes = self.minutes & (u64::MAX >> (63 - limit));
            (minutes != 0).then(|| (h, 63 - minutes.leading_zeros()))
        })
    }

    /// The most recent fire time at or before `now`, searching the current
    /// UTC day and the [`CRON_LOOKBACK_DAYS`] days before it.
    fn last_fire_at_or_before(&self, now: DateTime<Utc>) -> Option<NaiveDateTime> {
        let now = now.naive_utc();
        let mut date = now.date();
        let (mut hour, mut minute) = (now.hour(), now.minute());
        for _ in 0..=CRON_LOOKBACK_DAYS {
            if self.day_matches(
                date.month(),
                date.day(),
                date.weekday().num_days_from_sunday(),
            ) {
                if let Some((h, m)) = self.latest_time(hour, minute) {
                    return date.and_hms_opt(h, m, 0);
                }
            }
            date = date.pred_opt()?;
            (hour, minute) = (23, 59);
        }
        None
    }

    /// Refuse a schedule with a gap of more than [`CRON_LOOKBACK_DAYS`]
    /// days between two firing days anywhere in the Gregorian calendar
    /// (never firing, `30 2`, or only on February 29), so that
    /// [`Self::last_fire_at_or_before`] always finds the current period.
    fn check_fires_often(&self, expr: &str) -> Result<(), LeaderboardError> {
        let rare = || {
            invalid(
                "cron",
                format!("{expr:?} must fire at least once every {CRON_LOOKBACK_DAYS} days"),
            )
        };
        // One whole cycle from 2000-01-01, a Saturday; the gap across the
        // cycle's end wraps around to its first firing day.
        let (mut year, mut month, mut day, mut weekday) = (2000, 1, 1, 6);
        let (mut first, mut last) = (None, 0);
        for i in 0..GREGORIAN_CYCLE_DAYS {
            if self.day_matches(month, day, weekday) {
                if first.is_some() && i - last > CRON_LOOKBACK_DAYS {
                    return Err(rare());
                }
                first.get_or_insert(i);
                last = i;
            }
            weekday = (weekday + 1) % 7;
            day += 1;
            if day > days_in_month(year, month) {
                (day, month) = (1, month + 1);
                if month > 12 {
                    (month, year) = (1, year + 1);
                }
            }
        }
        match first {
            Some(first) if first + GREGORIAN_CYCLE_DAYS - last <= CRON_LOOKBACK_DAYS => Ok(()),
            _ => Err(rare()),
        }
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// One cron field as a bit set of values in `lo..=hi`: a `,`-separated list
/// of `*`, `n`, `a-b`, `*/step` or `a-b/step` (step 1 to `hi`).
fn cron_field(field: &str, name: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let num = |s: &str| -> Result<u32, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{name} {field:?}: {s:?} is not a number"));
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{name} {field:?}: {s:?} is out of range {lo}-{hi}"))?;
        if !(lo..=hi).contains(&v) {
            return Err(format!("{name} {field:?}: {v} is out of range {lo}-{hi}"));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for item in field.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (item, None),
        };
        let (a, b) = if base == "*" {
            (lo, hi)
        } else if let Some((a, b)) = base.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("{name} {field:?}: range {a}-{b} is reversed"));
            }
            (a, b)
        } else if step.is_some() {
            return Err(format!(
                "{name} {field:?}: a step needs `*` or a range (`*/n`, `a-b/n`)"
            ));
        } else {
            let v = num(base)?;
            (v, v)
        };
        let step = match step {
            None => 1,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=hi).contains(&n) && s.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{name} {field:?}: step {s:?} is not in 1-{hi}")),
            },
        };
        bits |= (a..=b)
            .step_by(step as usize)
            .fold(0u64, |acc, v| acc | 1u64 << v);
    }
    Ok(bits)
}

fn make_board_key(def: &BoardDef, region: &str, period: &str) -> String {
    match def.scope {
        Scope::Global => format!("{}/{period}", def.name),
        Scope::Region => format!("{}@{region}/{period}", def.name),
    }
}

/// The board name of a board key.
fn board_name(board_key: &str) -> Option<&str> {
    let end = board_key.find(['@', '/'])?;
    Some(&board_key[..end])
}

fn valid_board_key(k: &str) -> bool {
    k.len() <= BOARD_KEY_LEN_MAX
        && k.contains('/')
        && !k.contains('\0')
        && board_name(k).is_some_and(|n| check_name("board", n, BOARD_NAME_LEN_MAX, b"_-").is_ok())
}

fn entry_key(board_key: &str, player: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(ENTRY_PREFIX.len() + board_key.len() + 17);
    k.extend_from_slice(ENTRY_PREFIX);
    k.extend_from_slice(board_key.as_bytes());
    k.push(0);
    k.extend_from_slice(player.as_bytes());
    k
}

fn parse_entry_key(k: &[u8]) -> Option<(&str, Uuid)> {
    let rest = k.strip_prefix(ENTRY_PREFIX)?;
    if rest.len() < 18 || rest[rest.len() - 17] != 0 {
        return None;
    }
    let (bk, tail) = rest.split_at(rest.len() - 17);
    let player = Uuid::from_slice(&tail[1..]).ok()?;
    Some((std::str::from_utf8(bk).ok()?, player))
}

fn stat_key(player: Uuid) -> Vec<u8> {
    let mut k = STAT_PREFIX.to_vec();
    k.extend_from_slice(player.as_bytes());
    k
}

fn parse_stat_key(k: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(k.strip_prefix(STAT_PREFIX)?).ok()
}

fn log_key(version: u64) -> Vec<u8> {
    let mut k = LOG_PREFIX.to_vec();
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn parse_log_key(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.strip_prefix(LOG_PREFIX)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Move an entry's change-log record from `old` to `new`.
fn log_ops(batch: &mut Batch, old: Option<u64>, new: u64, key: &[u8]) {
    if let Some(old) = old {
        batch.delete(log_key(old));
    }
    batch.put(log_key(new), key.to_vec());
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).single().unwrap()
    }

    fn def(name: &str, sort: SortOrder, operator: Operator) -> BoardDef {
        BoardDef {
            name: name.into(),
            sort,
            operator,
            reset: Reset::None,
            cron: None,
            scope: Scope::Global,
            min_score: None,
            max_score: None,
        }
    }

    fn config() -> LeaderboardConfig {
        let mut bounded = def("arena", SortOrder::Desc, Operator::Best);
        bounded.min_score = Some(0);
        bounded.max_score = Some(1_000_000);
        LeaderboardConfig {
            boards: vec![
                bounded,
                def("speedrun", SortOrder::Asc, Operator::Best),
                def("elo", SortOrder::Desc, Operator::Latest),
                def("kills", SortOrder::Desc, Operator::Sum),
                BoardDef {
                    reset: Reset::Weekly,
                    scope: Scope::Region,
                    ..def("weekly", SortOrder::Desc, Operator::Best)
                },
            ],
            level_curve: LevelCurve::default(),
        }
    }

    async fn open_at(dir: &std::path::Path, node: NodeId) -> LeaderboardEngine {
        // A dropped Storage releases sled's lock once its flusher notices.
        let mut tries = 0;
        let storage = loop {
            match Storage::open_sled(dir) {
                Ok(s) => break s,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("open: {e}"),
            }
        };
        LeaderboardEngine::open(storage, &config(), node, "eu-west").unwrap()
    }

    fn pid(i: u128) -> Uuid {
        Uuid::from_u128(i + 1)
    }

    /// The HTTP layer spawns these futures: they must be `Send`, and the
    /// engine shareable.
    #[allow(dead_code)]
    fn futures_are_send(e: &'static LeaderboardEngine, d: &'static Delta) {
        fn send<T: Send>(_: T) {}
        fn sync<T: Send + Sync>() {}
        sync::<LeaderboardEngine>();
        let now = Utc::now();
        send(e.submit("a", Uuid::nil(), 1, now));
        send(e.merge_remote(d, now));
        send(e.update_stats(Uuid::nil(), &[], now));
        send(e.add_board(def("a", SortOrder::Desc, Operator::Best)));
    }

    #[tokio::test]
    async fn submit_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_at(dir.path(), 1).await;
        let now = t(2026, 11, 25);
        for i in 0..50u128 {
            e.submit("arena", pid(i), (i as i64) * 10, now)
                .await
                .unwrap();
        }
        // A worse best does not change anything; a better one does.
        let s = e.submit("arena", pid(3), 5, now).await.unwrap();
        assert!(!s.changed);
        assert_eq!(s.score, 30);
        let s = e.submit("arena", pid(3), 1000, now).await.unwrap();
        assert!(s.changed);
        assert_eq!(s.rank, 1);
        let page = e.top("arena", None, 3, 0, now).unwrap();
        assert_eq!(page.total, 50);
        assert_eq!(page.period, "all");
        let ids: Vec<Uuid> = page.entries.iter().map(|r| r.player_id).collect();
        assert_eq!(ids, vec![pid(3), pid(49), pid(48)]);
        assert_eq!(page.next_offset, Some(3));
        assert_eq!(
            page.entries[0].last_updated_ms,
            now.timestamp_millis() as u64
        );
        let last = e.top("arena", None, 10, 45, now).unwrap();
        assert_eq!(last.entries.len(), 5);
        assert_eq!(last.next_offset, None);
        assert_eq!(
            e.rank("arena", None, pid(49), now).unwrap().unwrap().rank,
            2
        );
        assert_eq!(e.rank("arena", None, pid(999), now).unwrap(), None);
        let around = e.around("arena", None, pid(40), 2, now).unwrap();
        let ranks: Vec<u64> = around.entries.iter().map(|r| r.rank).collect();
        assert_eq!(ranks, vec![9, 10, 11, 12, 13]);
        assert_eq!(around.entries[2].player_id, pid(40));
        assert_eq!(e.count("arena", None, now).unwrap(), 50);
    }

    #[tokio::test]
    async fn operators_and_sort() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_at(dir.path(), 1).await;
        let now = t(2026, 11, 25);
        e.submit("speedrun", pid(1), 90, now).await.unwrap();
        e.submit("speedrun", pid(1), 120, now).await.unwrap();
        e.submit("speedrun", pid(2), 100, now).await.unwrap();
        let p = e.top("speedrun", None, 10, 0, now).unwrap();
        assert_eq!((p.entries[0].player_id, p.entries[0].score), (pid(1), 90));
        e.submit("elo", pid(1), 1500, now).await.unwrap();
        e.submit("elo", pid(1), 1400, now).await.unwrap();
        assert_eq!(
            e.rank("elo", None, pid(1), now).unwrap().unwrap().score,
            1400
        );
        e.submit("kills", pid(1), 3, now).await.unwrap();
        let s = e.submit("kills", pid(1), 4, now).await.unwrap();
        assert_eq!(s.score, 7);
        // Equal best scores: the earlier one ranks first.
        e.submit("arena", pid(7), 50, t(2026, 11, 25))
            .await
            .unwrap();
        e.submit("arena", pid(6), 50, t(2026, 11, 26))
            .await
            .unwrap();
        let p = e.top("arena", None, 10, 0, now).unwrap();
        assert_eq!(p.entries[0].player_id, pid(7));
    }

    #[tokio::test]
    async fn bad_input_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_at(dir.path(), 1).await;
        let now = t(2026, 11, 25);
        let err = e.submit("nope", pid(1), 1, now).await.unwrap_err();
        assert!(matches!(err, LeaderboardError::UnknownBoard { .. }));
        assert_eq!(err.field(), Some("board"));
        // Bounds are inclusive: the edges pass, one beyond fails.
        e.submit("arena", pid(1), 0, now).await.unwrap();
        e.submit("arena", pid(1), 1_000_000, now).await.unwrap();
        for bad in [-1, 1_000_001, i64::MIN, i64::MAX] {
            let err = e.submit("arena", pid(1), bad, now).await.unwrap_err();
            assert!(
                matches!(err, LeaderboardError::ScoreOutOfBounds { .. }),
                "{bad}"
            );
            assert_eq!(err.field(), Some("score"));
        }
        // Page limits at their edges.
        assert!(e.top("arena", None, LIMIT_MAX, 0, now).is_ok());
        assert_eq!(
            e.top("arena", None, LIMIT_MAX + 1, 0, now)
                .unwrap_err()
                .field(),
            Some("limit")
        );
        assert_eq!(
            e.top("arena", None, 0, 0, now).unwrap_err().field(),
            Some("limit")
        );
        assert!(e
            .top("arena", None, 1, OFFSET_MAX, now)
            .unwrap()
            .entries
            .is_empty());
        assert_eq!(
            e.top("arena", None, 1, OFFSET_MAX + 1, now)
                .unwrap_err()
                .field(),
            Some("offset")
        );
        assert!(e.around("arena", None, pid(1), AROUND_MAX, now).is_ok());
        assert_eq!(
            e.around("arena", None, pid(1), AROUND_MAX + 1, now)
                .unwrap_err()
                .field(),
            Some("n")
        );
        // Sum overflow is an error, not a wrap.
        e.submit("kills", pid(1), i64::MAX, now).await.unwrap();
        e.submit("kills", pid(1), i64::MAX, now).await.unwrap();
        let err = e.submit("kills", pid(1), i64::MAX, now).await.unwrap_err();
        assert!(matches!(err, LeaderboardError::Overflow { field: "score" }));
        // Definitions.
        let mut d = def("Bad Name", SortOrder::Desc, Operator::Best);
        assert_eq!(
            e.add_board(d.clone()).await.unwrap_err().field(),
            Some("name")
        );
        d.name = "x".repeat(BOARD_NAME_LEN_MAX);
        e.add_board(d.clone()).await.unwrap();
        d.name = "x".repeat(BOARD_NAME_LEN_MAX + 1);
        assert!(e.add_board(d).await.is_err());
        let mut d = def("arena", SortOrder::Asc, Operator::Best);
        assert!(matches!(
            e.add_board(d.clone()).await,
            Err(LeaderboardError::BoardExists { .. })
        ));
        d.name = "minmax".into();
        d.min_score = Some(2);
        d.max_score = Some(1);
        assert_eq!(e.add_board(d).await.unwrap_err().field(), Some("min_score"));
        // Unknown config fields are refused.
        let json = r#"{"name":"a","sort":"desc","operator":"best","colour":"red"}"#;
        assert!(serde_json::from_str::<BoardDef>(json).is_err());
        let json = r#"{"name":"a","sort":"asc","operator":"sum","reset":"weekly","scope":"region","min_score":0}"#;
        let d: BoardDef = serde_json::from_str(json).unwrap();
        assert_eq!(
            (d.sort, d.operator, d.reset, d.scope),
            (SortOrder::Asc, Operator::Sum, Reset::Weekly, Scope::Region)
        );
    }

    #[tokio::test]
    async fn periods_are_separate_boards() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_at(dir.path(), 1).await;
        let w48 = t(2026, 11, 25);
        let w49 = t(2026, 12, 1);
        let s = e.submit("weekly", pid(1), 10, w48).await.unwrap();
        assert_eq!(s.period, "weekly-2026-W48");
        assert_eq!(s.board_key, "weekly@eu-west/weekly-2026-W48");
        e.submit("weekly", pid(2), 20, w49).await.unwrap();
        assert_eq!(e.count("weekly", None, w49).unwrap(), 1);
        let past = e
            .top("weekly", Some("weekly-2026-W48"), 10, 0, w49)
            .unwrap();
        assert_eq!(past.entries[0].player_id, pid(1));
        for bad in [
            "weekly-2026-W60",
            "weekly-2026-W1",
            "2026-W48",
            "all",
            "daily-2026-11-25",
            "",
        ] {
            let err = e.top("weekly", Some(bad), 10, 0, w49).unwrap_err();
            assert_eq!(err.field(), Some("period"), "{bad}");
        }
        assert_eq!(period_label(Reset::Daily, w48), "daily-2026-11-25");
        assert_eq!(period_label(Reset::Monthly, w48), "monthly-2026-11");
        // ISO week 1 of 2027 starts on 2027-01-04; 2027-01-01 is 2026-W53.
        assert_eq!(
            period_label(Reset::Weekly, t(2027, 1, 1)),
            "weekly-2026-W53"
        );
        assert!(check_period(Reset::Weekly, "weekly-2026-W53").is_ok());
        assert!(check_period(Reset::Daily, "daily-2026-02-30").is_err());
        assert!(check_period(Reset::Monthly, "monthly-2026-13").is_err());
        assert!(check_period(Reset::Monthly, "monthly-2026-12").is_ok());
    }

    #[tokio::test]
    async fn restart_rebuilds_indexes_and_definitions() {
        let dir = tempfile::tempdir().unwrap();
        let now = t(2026, 11, 25);
        {
            let e = open_at(dir.path(), 1).await;
            e.add_board(def("runtime", SortOrder::Desc, Operator::Best))
                .await
                .unwrap();
            for i in 0..100u128 {
                e.submit("arena", pid(i), i as i64, now).await.unwrap();
                e.submit("runtime", pid(i), -(i as i64), now).await.unwrap();
            }
            e.update_stats(pid(1), &[StatUpdate::Xp { amount: 250 }], now)
                .await
                .unwrap();
            let noon = Utc.with_ymd_and_hms(2020, 1, 1, 12, 0, 0).single().unwrap();
            e.submit("elo", pid(1), 1500, noon).await.unwrap();
        }
        let e = open_at(dir.path(), 1).await;
        assert_eq!(e.count("arena", None, now).unwrap(), 100);
        assert_eq!(
            e.top("arena", None, 1, 0, now).unwrap().entries[0].player_id,
            pid(99)
        );
        assert_eq!(
            e.top("runtime", None, 1, 0, now).unwrap().entries[0].player_id,
            pid(0)
        );
        assert_eq!(e.player_stats(pid(1)).unwrap().xp, 250);
        // The wall clock stepped back an hour across the restart: the next
        // `latest` write still wins over the stored one.
        let eleven = Utc.with_ymd_and_hms(2020, 1, 1, 11, 0, 0).single().unwrap();
        e.submit("elo", pid(1), 1400, eleven).await.unwrap();
        let row = e.rank("elo", None, pid(1), eleven).unwrap().unwrap();
        assert_eq!(row.score, 1400);
        // The change log continues after the restart.
        let before = e.delta_since(0, DELTA_ENTRIES_MAX).unwrap().version;
        assert_eq!(before, 203);
        e.submit("arena", pid(5), 1_000, now).await.unwrap();
        assert_eq!(e.delta_since(before, 10).unwrap().entries.len(), 1);
    }

    #[tokio::test]
    async fn two_regions_converge() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = open_at(da.path(), 1).await;
        let b = open_at(db.path(), 2).await;
        let now = t(2026, 11, 25);
        // Concurrent increments in two regions both count.
        a.submit("kills", pid(1), 5, now).await.unwrap();
        b.submit("kills", pid(1), 7, now).await.unwrap();
        a.submit("arena", pid(2), 40, now).await.unwrap();
        b.submit("arena", pid(2), 30, now).await.unwrap();
        b.submit("elo", pid(3), 1200, now).await.unwrap();
        a.submit("elo", pid(3), 1300, t(2026, 11, 26))
            .await
            .unwrap();
        a.update_stats(
            pid(1),
            &[StatUpdate::Add {
                name: "wins".into(),
                delta: 1,
            }],
            now,
        )
        .await
        .unwrap();
        b.update_stats(
            pid(1),
            &[
                StatUpdate::Add {
                    name: "wins".into(),
                    delta: 2,
                },
                StatUpdate::Achievement {
                    name: "first_blood".into(),
                },
            ],
            now,
        )
        .await
        .unwrap();
        let da_ = a.delta_since(0, 100).unwrap();
        let db_ = b.delta_since(0, 100).unwrap();
        // Deltas survive the wire encoding.
        let db_ = Delta::from_bytes(&db_.to_bytes()).unwrap();
        let r = a.merge_remote(&db_, now).await.unwrap();
        assert_eq!(r.skipped, 0);
        b.merge_remote(&da_, now).await.unwrap();
        // Applying twice changes nothing.
        let again = a.merge_remote(&db_, now).await.unwrap();
        assert_eq!(again.applied, 0);
        for e in [&a, &b] {
            assert_eq!(
                e.rank("kills", None, pid(1), now).unwrap().unwrap().score,
                12
            );
            assert_eq!(
                e.rank("arena", None, pid(2), now).unwrap().unwrap().score,
                40
            );
            assert_eq!(
                e.rank("elo", None, pid(3), now).unwrap().unwrap().score,
                1300
            );
            let st = e.player_stats(pid(1)).unwrap();
            assert_eq!(st.counters["wins"], 3);
            assert_eq!(st.achievements, vec!["first_blood".to_string()]);
        }
        // Garbage in a delta is skipped, not fatal.
        let bad = Delta {
            entries: vec![
                DeltaEntry::Score {
                    board_key: "no slash".into(),
                    player: pid(1),
                    state: ScoreState::Sum(PnCounter::default()),
                },
                DeltaEntry::Score {
                    board_key: "kills/all".into(),
                    player: pid(1),
                    state: ScoreState::Lww(LwwRegister::default()),
                },
                // A new entry of the wrong kind for a known board.
                DeltaEntry::Score {
                    board_key: "kills/all".into(),
                    player: pid(77),
                    state: ScoreState::Max(MaxRegister::from_entry(Some((5, Hlc::ZERO)))),
                },
            ],
            version: 0,
        };
        let r = a.merge_remote(&bad, now).await.unwrap();
        assert_eq!(r.skipped, 3);
        assert_eq!(a.rank("kills", None, pid(77), now).unwrap(), None);
        assert!(Delta::from_bytes(&[0xff; 4]).is_err());
    }

    #[tokio::test]
    async fn delta_since_pages_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_at(dir.path(), 1).await;
        let now = t(2026, 11, 25);
        for i in 0..5u128 {
            e.submit("arena", pid(i), 10, now).await.unwrap();
        }
        // Player 0 changes again: its old log record moves to the end.
        e.submit("arena", pid(0), 20, now).await.unwrap();
        let mut v = 0;
        let mut seen = Vec::new();
        loop {
            let d = e.delta_since(v, 2).unwrap();
            assert!(d.entries.len() <= 2);
            if d.entries.is_empty() {
                assert_eq!(d.version, v);
                break;
            }
            v = d.version;
            for en in d.entries {
                if let DeltaEntry::Score { player, state, .. } = en {
                    seen.push((player, state.score()));
                }
            }
        }
        assert_eq!(v, 6);
        assert_eq!(seen.len(), 5);
        assert_eq!(seen.last(), Some(&(pid(0), Some(20))));
        // A limit of 0 is clamped to 1; past the end is empty.
        assert_eq!(e.delta_since(0, 0).unwrap().entries.len(), 1);
        assert!(e.delta_since(u64::MAX, 10).unwrap().entries.is_empty());
        // An oversized delta is refused as a whole.
        let big = Delta {
            entries: vec![
                DeltaEntry::Stats {
                    player: pid(1),
                    state: StatsState::default()
                };
                DELTA_ENTRIES_MAX + 1
            ],
            version: 0,
        };
        let err = e.merge_remote(&big, now).await.unwrap_err();
        assert_eq!(err.field(), Some("entries"));
    }

    /// Three regions submit concurrently (same millisecond, many equal
    /// scores), then exchange deltas in a shuffled order with duplicates:
    /// every board reads identically everywhere, ties included.
    #[tokio::test]
    async fn replicas_converge_to_identical_ranks() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            nodes.push(open_at(d.path(), 100 + i as u64).await);
        }
        let now = t(2026, 11, 25);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let boards = ["arena", "speedrun", "elo", "kills"];
        for _ in 0..300 {
            let r = next();
            let node = &nodes[(r % 3) as usize];
            let board = boards[((r >> 8) % 4) as usize];
            let player = pid(u128::from((r >> 16) % 40));
            let score = ((r >> 32) % 5) as i64;
            node.submit(board, player, score, now).await.unwrap();
        }
        let mut deltas = Vec::new();
        for n in &nodes {
            let mut v = 0;
            loop {
                let d = n.delta_since(v, 7).unwrap();
                if d.entries.is_empty() {
                    break;
                }
                v = d.version;
                deltas.push(d);
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            let mut order: Vec<usize> = (0..deltas.len()).collect();
            // Shuffle differently per node, and apply a few twice.
            for j in (1..order.len()).rev() {
                order.swap(j, (next() % (j as u64 + 1)) as usize);
            }
            order.extend(order.clone().into_iter().take(i * 3));
            for k in order {
                n.merge_remote(&deltas[k], now).await.unwrap();
            }
        }
        for board in boards {
            let reference = nodes[0].top(board, None, LIMIT_MAX, 0, now).unwrap();
            assert!(reference.total > 0);
            for n in &nodes[1..] {
                assert_eq!(
                    n.top(board, None, LIMIT_MAX, 0, now).unwrap(),
                    reference,
                    "{board}"
                );
            }
        }
    }

    #[tokio::test]
    async fn entries_before_definition_are_indexed_when_added() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = open_at(da.path(), 1).await;
        let b = open_at(db.path(), 2).await;
        let now = t(2026, 11, 25);
        a.add_board(def("late", SortOrder::Desc, Operator::Best))
            .await
            .unwrap();
        a.submit("late", pid(1), 9, now).await.unwrap();
        b.merge_remote(&a.delta_since(0, 10).unwrap(), now)
            .await
            .unwrap();
        assert!(b.count("late", None, now).is_err());
        b.add_board(def("late", SortOrder::Desc, Operator::Best))
            .await
            .unwrap();
        assert_eq!(b.count("late", None, now).unwrap(), 1);
    }

    #[tokio::test]
    async fn erased_players_stay_erased_against_stale_replicas() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = open_at(da.path(), 1).await;
        let b = open_at(db.path(), 2).await;
        let now = t(2026, 11, 25);
        for board in ["late"] {
            for e in [&a, &b] {
                e.add_board(def(board, SortOrder::Desc, Operator::Best))
                    .await
                    .unwrap();
            }
        }
        a.submit("late", pid(1), 9, now).await.unwrap();
        a.submit("late", pid(2), 5, now).await.unwrap();
        // b holds a stale copy (and a newer score) of player 1.
        b.merge_remote(&a.delta_since(0, 10).unwrap(), now)
            .await
            .unwrap();
        b.submit("late", pid(1), 12, now).await.unwrap();
        assert_eq!(a.erase_player(pid(1)).await.unwrap(), 1);
        assert_eq!(a.count("late", None, now).unwrap(), 1);
        let r = b.merge_remote(&b.delta_since(0, 10).unwrap(), now).await;
        assert!(r.is_ok());
        let report = a
            .merge_remote(&b.delta_since(0, 10).unwrap(), now)
            .await
            .unwrap();
        assert!(report.skipped >= 1, "{report:?}");
        assert_eq!(a.count("late", None, now).unwrap(), 1, "resurrected");
        assert!(matches!(
            a.submit("late", pid(1), 1, now).await,
            Err(LeaderboardError::Erased { .. })
        ));
        drop(a);
        // The mark survives a restart.
        assert!(open_at(da.path(), 1).await.is_erased(pid(1)));
    }

    #[tokio::test]
    async fn stats_and_levels() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_at(dir.path(), 1).await;
        let now = t(2026, 11, 25);
        let curve = LevelCurve::default();
        assert_eq!(curve.level_for_xp(0), 1);
        assert_eq!(curve.xp_for_level(2), 100);
        assert_eq!(curve.level_for_xp(99), 1);
        assert_eq!(curve.level_for_xp(100), 2);
        assert_eq!(curve.level_for_xp(u64::MAX), curve.max_level);
        let s = e
            .update_stats(
                pid(1),
                &[
                    StatUpdate::Xp { amount: 150 },
                    StatUpdate::Max {
                        name: "best_streak".into(),
                        value: 4,
                    },
                    StatUpdate::Max {
                        name: "best_streak".into(),
                        value: 2,
                    },
                    StatUpdate::Achievement { name: "a1".into() },
                    StatUpdate::Achievement { name: "a1".into() },
                ],
                now,
            )
            .await
            .unwrap();
        assert_eq!((s.xp, s.level, s.next_level_xp), (150, 2, Some(282)));
        assert_eq!(s.maxima["best_streak"], 4);
        assert_eq!(s.achievements.len(), 1);
        // Limits at their edges.
        let err = e
            .update_stats(
                pid(1),
                &[StatUpdate::Xp {
                    amount: XP_AWARD_MAX + 1,
                }],
                now,
            )
            .await
            .unwrap_err();
        assert_eq!(err.field(), Some("amount"));
        e.update_stats(
            pid(1),
            &[StatUpdate::Xp {
                amount: XP_AWARD_MAX,
            }],
            now,
        )
        .await
        .unwrap();
        assert_eq!(
            e.update_stats(pid(1), &[], now).await.unwrap_err().field(),
            Some("updates")
        );
        let many = vec![StatUpdate::Xp { amount: 1 }; STAT_UPDATES_MAX + 1];
        assert_eq!(
            e.update_stats(pid(1), &many, now)
                .await
                .unwrap_err()
                .field(),
            Some("updates")
        );
        let bad = StatUpdate::Add {
            name: "Has Space".into(),
            delta: 1,
        };
        assert_eq!(
            e.update_stats(pid(1), &[bad], now)
                .await
                .unwrap_err()
                .field(),
            Some("name")
        );
        for i in 0..STATS_PER_PLAYER_MAX {
            e.update_stats(
                pid(2),
                &[StatUpdate::Add {
                    name: format!("c{i}"),
                    delta: 1,
                }],
                now,
            )
            .await
            .unwrap();
        }
        let full = e
            .update_stats(
                pid(2),
                &[StatUpdate::Add {
                    name: "one_more".into(),
                    delta: 1,
                }],
                now,
            )
            .await
            .unwrap_err();
        assert!(matches!(full, LeaderboardError::StatsFull { .. }));
        assert!(LevelCurve {
            base: f64::NAN,
            ..LevelCurve::default()
        }
        .validate()
        .is_err());
        assert!(LevelCurve {
            max_level: LEVEL_MAX + 1,
            ..LevelCurve::default()
        }
        .validate()
        .is_err());
        assert!(LevelCurve {
            max_level: LEVEL_MAX,
            ..LevelCurve::default()
        }
        .validate()
        .is_ok());
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().unwrap()
    }

    fn cron_def(name: &str, expr: &str) -> BoardDef {
        BoardDef {
            reset: Reset::Cron,
            cron: Some(expr.into()),
            ..def(name, SortOrder::Desc, Operator::Best)
        }
    }

    fn cron_period(expr: &str, now: DateTime<Utc>) -> String {
        cron_def("c", expr).period_label(now).unwrap()
    }

    fn bits(values: impl IntoIterator<Item = u32>) -> u64 {
        values.into_iter().fold(0, |acc, v| acc | 1 << v)
    }

    #[test]
    fn cron_accepts_lists_ranges_and_steps() {
        let p = |e: &str| CronSchedule::parse(e).unwrap();
        let all = p("* * * * *");
        assert_eq!(all.minutes, bits(0..60));
        assert_eq!(all.hours, bits(0..24));
        assert_eq!(all.days, bits(1..=31));
        assert_eq!(all.months, bits(1..=12));
        assert_eq!(all.weekdays, bits(0..7));
        assert!(all.days_star && all.weekdays_star);
        let c = p("0,30 9-17/2 1-10/3 */5 1-5");
        assert_eq!(c.minutes, bits([0, 30]));
        assert_eq!(c.hours, bits([9, 11, 13, 15, 17]));
        assert_eq!(c.days, bits([1, 4, 7, 10]));
        assert_eq!(c.months, bits([1, 6, 11]));
        assert_eq!(c.weekdays, bits(1..=5));
        assert!(!c.days_star && !c.weekdays_star);
        assert_eq!(p("*/15 * * * *").minutes, bits([0, 15, 30, 45]));
        assert_eq!(
            p("1,5-7,*/20 * * * *").minutes,
            bits([0, 1, 5, 6, 7, 20, 40])
        );
        assert_eq!(p("7-7/5 * * * *").minutes, bits([7]));
        // Leading zeros and any whitespace between fields.
        assert_eq!(p(" 05\t18  * * 5 "), p("5 18 * * 5"));
        // Day-of-week 7 is Sunday, like 0, also inside ranges and steps.
        assert_eq!(p("0 0 * * 7"), p("0 0 * * 0"));
        assert_eq!(p("0 0 * * 5-7").weekdays, bits([0, 5, 6]));
        assert_eq!(p("0 0 * * 0-7").weekdays, bits(0..7));
        assert_eq!(p("0 0 * * */7").weekdays, bits([0]));
        // Field edges and the largest steps.
        for e in [
            "59 23 31 12 7",
            "0 0 1 1 0",
            "*/59 */23 */31 */12 *",
            "*/59 */23 * */12 */7",
            "0 18 * * 5",
            "0 0 1 1 *",
            "59 23 31 12 *",
            "0 0 31 * *",
            "0 0 29 2 1",
            "0 0 1-31 2 *",
        ] {
            p(e);
            cron_def("c", e)
                .validate()
                .unwrap_or_else(|err| panic!("{e}: {err}"));
        }
    }

    #[test]
    fn cron_rejects_malformed_expressions() {
        let long = format!("0 0 * * {}", vec!["1"; 70].join(","));
        assert!(long.len() > CRON_LEN_MAX);
        for e in [
            "",
            "   ",
            "* * * *",
            "* * * * * *",
            "0 0 1 1 * 2026",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 0 *",
            "* * * 13 *",
            "* * * * 8",
            "5-1 * * * *",
            "*/0 * * * *",
            "*/60 * * * *",
            "* * * * */8",
            "5/10 * * * *",
            "*/ * * * *",
            "/5 * * * *",
            "*/2/3 * * * *",
            "*/+5 * * * *",
            "1-2-3 * * * *",
            "1- * * * *",
            "-1 * * * *",
            "*-5 * * * *",
            "1,,2 * * * *",
            ",1 * * * *",
            "1, * * * *",
            "+5 * * * *",
            "1.5 * * * *",
            "99999999999 * * * *",
            "a * * * *",
            "0 0 * * MON",
            "0 0 * JAN *",
            "0 0 L * *",
            "0 0 ? * 1",
            "0 0 1W * *",
            "0 0 * * 5#3",
            "@daily",
            "0\u{a0}0 * * *",
            long.as_str(),
            // Syntactically fine but too rare: never, or not every year.
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 29 2 *",
            // `*/31` starts with `*`: February 1 AND a Monday, some years only.
            "0 0 */31 2 1",
        ] {
            let err = cron_def("c", e).validate().unwrap_err();
            assert!(
                matches!(err, LeaderboardError::Invalid { field: "cron", .. }),
                "{e:?}: {err}"
            );
        }
        // `reset = "cron"` and `cron` go together.
        let mut d = cron_def("c", "0 18 * * 5");
        d.cron = None;
        assert_eq!(d.validate().unwrap_err().field(), Some("cron"));
        let mut d = cron_def("c", "0 18 * * 5");
        d.reset = Reset::Weekly;
        assert_eq!(d.validate().unwrap_err().field(), Some("cron"));
    }

    #[test]
    fn cron_period_is_the_last_fire_time() {
        let fri = "0 18 * * 5";
        // At, just before and just after a fire time.
        assert_eq!(
            cron_period(fri, at(2026, 11, 20, 18, 0, 0)),
            "cron-2026-11-20T18:00"
        );
        assert_eq!(
            cron_period(fri, at(2026, 11, 20, 17, 59, 59)),
            "cron-2026-11-13T18:00"
        );
        assert_eq!(
            cron_period(fri, at(2026, 11, 20, 18, 0, 1)),
            "cron-2026-11-20T18:00"
        );
        assert_eq!(
            cron_period(fri, at(2026, 11, 27, 17, 59, 59)),
            "cron-2026-11-20T18:00"
        );
        // Across a year boundary (2027-01-01 is a Friday).
        assert_eq!(
            cron_period(fri, at(2027, 1, 1, 0, 0, 0)),
            "cron-2026-12-25T18:00"
        );
        // Several fire times a day.
        let q = "*/15 9-17 * * *";
        assert_eq!(
            cron_period(q, at(2026, 11, 25, 9, 14, 59)),
            "cron-2026-11-25T09:00"
        );
        assert_eq!(
            cron_period(q, at(2026, 11, 25, 9, 15, 0)),
            "cron-2026-11-25T09:15"
        );
        assert_eq!(
            cron_period(q, at(2026, 11, 25, 8, 59, 59)),
            "cron-2026-11-24T17:45"
        );
        assert_eq!(
            cron_period(q, at(2026, 11, 25, 23, 59, 0)),
            "cron-2026-11-25T17:45"
        );
        // The longest lookback: a yearly schedule from just before its next
        // fire, across a leap year (366 days back).
        assert_eq!(
            cron_period("59 23 31 12 *", at(2024, 12, 31, 23, 58, 59)),
            "cron-2023-12-31T23:59"
        );
        assert_eq!(
            cron_period("0 0 1 1 *", at(2024, 12, 31, 23, 59, 59)),
            "cron-2024-01-01T00:00"
        );
        // A period starts exactly at its fire time, seconds ignored.
        let s = CronSchedule::parse(fri).unwrap();
        let fire = at(2026, 11, 20, 18, 0, 0).naive_utc();
        assert!(s.matches(fire));
        assert_eq!(
            s.last_fire_at_or_before(at(2026, 11, 20, 18, 0, 59)),
            Some(fire)
        );
        // An expression with no fire time in the window gives no period (such
        // a definition is refused by `validate`).
        let never = CronSchedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(
            never.last_fire_at_or_before(at(2026, 11, 25, 0, 0, 0)),
            None
        );
        let mut d = cron_def("c", "0 0 30 2 *");
        assert_eq!(
            d.period_label(at(2026, 11, 25, 0, 0, 0))
                .unwrap_err()
                .field(),
            Some("cron")
        );
        d.cron = Some("nonsense".into());
        assert_eq!(
            d.period_label(at(2026, 11, 25, 0, 0, 0))
                .unwrap_err()
                .field(),
            Some("cron")
        );
    }

    /// The day-by-day search agrees with a minute-by-minute one.
    #[test]
    fn cron_search_matches_brute_force() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for expr in [
            "* * * * *",
            "0 18 * * 5",
            "*/15 9-17 * * *",
            "30 */6 1,15 * *",
            "0 0 1 * 1",
            "0 0 */2 * 1",
            "5-10/2 22-23 * * 0,6",
            "0 12 13 * 5",
            "59 23 28-31 * *",
        ] {
            let s = CronSchedule::parse(expr).unwrap();
            for _ in 0..20 {
                let now = at(2026, 1, 1, 0, 0, 0)
                    + chrono::Duration::seconds((next() % (3 * 366 * 86_400)) as i64);
                let mut m = now.naive_utc().with_second(0).unwrap();
                while !s.matches(m) {
                    m -= chrono::Duration::minutes(1);
                }
                assert_eq!(s.last_fire_at_or_before(now), Some(m), "{expr} {now}");
            }
        }
    }

    #[test]
    fn cron_day_fields_are_ored_when_both_restricted() {
        // The 1st of the month OR a Monday (2026-11-30 is a Monday,
        // 2026-12-01 a Tuesday).
        let s = CronSchedule::parse("0 0 1 * 1").unwrap();
        let day = |y, m, d| at(y, m, d, 0, 0, 0).naive_utc();
        assert!(s.matches(day(2026, 12, 1)));
        assert!(s.matches(day(2026, 11, 30)));
        assert!(!s.matches(day(2026, 12, 2)));
        assert_eq!(
            cron_period("0 0 1 * 1", at(2026, 12, 6, 12, 0, 0)),
            "cron-2026-12-01T00:00"
        );
        assert_eq!(
            cron_period("0 0 1 * 1", at(2026, 12, 7, 12, 0, 0)),
            "cron-2026-12-07T00:00"
        );
        // The month still restricts both: the 15th of March or a Monday in
        // March (2026-03-15 is a Sunday, 2026-03-30 a Monday).
        assert_eq!(
            cron_period("0 6 15 3 1", at(2026, 11, 25, 0, 0, 0)),
            "cron-2026-03-30T06:00"
        );
        assert_eq!(
            cron_period("0 6 15 3 *", at(2026, 11, 25, 0, 0, 0)),
            "cron-2026-03-15T06:00"
        );
        // Only one day field restricted: only it counts.
        assert_eq!(
            cron_period("0 0 1 * *", at(2026, 12, 7, 12, 0, 0)),
            "cron-2026-12-01T00:00"
        );
        assert_eq!(
            cron_period("0 0 * * 1", at(2026, 12, 6, 12, 0, 0)),
            "cron-2026-11-30T00:00"
        );
        // A field starting with `*` is unrestricted even with a step (Vixie):
        // then both must match, an odd day AND a Monday.
        let s = CronSchedule::parse("0 0 */2 * 1").unwrap();
        assert!(!s.matches(day(2026, 11, 30)));
        assert!(!s.matches(day(2026, 12, 1)));
        assert!(s.matches(day(2026, 12, 7)));
        // Sunday as 7.
        assert_eq!(
            cron_period("0 12 * * 7", at(2026, 11, 30, 0, 0, 0)),
            "cron-2026-11-29T12:00"
        );
    }

    #[test]
    fn cron_config_is_backward_compatible() {
        // Existing definitions parse as before and serialize without `cron`.
        let d: BoardDef = serde_json::from_str(r#"{"name":"w","reset":"weekly"}"#).unwrap();
        assert_eq!((d.reset, d.cron.as_deref()), (Reset::Weekly, None));
        d.validate().unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("cron"), "{json}");
        assert_eq!(serde_json::from_str::<BoardDef>(&json).unwrap(), d);
        // The new shape round-trips.
        let d: BoardDef =
            serde_json::from_str(r#"{"name":"f","reset":"cron","cron":"0 18 * * 5"}"#).unwrap();
        assert_eq!(d, cron_def("f", "0 18 * * 5"));
        d.validate().unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<BoardDef>(&json).unwrap(), d);
        // Unknown fields are still refused.
        let bad = r#"{"name":"f","reset":"cron","schedule":"0 18 * * 5"}"#;
        assert!(serde_json::from_str::<BoardDef>(bad).is_err());
        // The existing resets label exactly as before.
        let now = t(2026, 11, 25);
        for (reset, label) in [
            (Reset::None, "all"),
            (Reset::Daily, "daily-2026-11-25"),
            (Reset::Weekly, "weekly-2026-W48"),
            (Reset::Monthly, "monthly-2026-11"),
        ] {
            let d = BoardDef {
                reset,
                ..def("x", SortOrder::Desc, Operator::Best)
            };
            assert_eq!(period_label(reset, now), label);
            assert_eq!(d.period_label(now).unwrap(), label);
            d.check_period(label).unwrap();
            assert_eq!(
                d.check_period("cron-2026-11-20T18:00").unwrap_err().field(),
                Some("period")
            );
        }
    }

    #[tokio::test]
    async fn cron_board_submits_and_reads_by_period() {
        let dir = tempfile::tempdir().unwrap();
        let fri = cron_def("friday", "0 18 * * 5");
        let now = t(2026, 11, 25);
        {
            let e = open_at(dir.path(), 1).await;
            e.add_board(fri.clone()).await.unwrap();
            // The identical definition again is a no-op.
            e.add_board(fri.clone()).await.unwrap();
            let s = e
                .submit("friday", pid(1), 10, at(2026, 11, 20, 17, 59, 59))
                .await
                .unwrap();
            assert_eq!(s.period, "cron-2026-11-13T18:00");
            assert_eq!(s.board_key, "friday/cron-2026-11-13T18:00");
            let s = e
                .submit("friday", pid(2), 20, at(2026, 11, 20, 18, 0, 0))
                .await
                .unwrap();
            assert_eq!((s.period.as_str(), s.rank), ("cron-2026-11-20T18:00", 1));
            e.submit("friday", pid(3), 30, now).await.unwrap();
            let cur = e.top("friday", None, 10, 0, now).unwrap();
            assert_eq!(cur.period, "cron-2026-11-20T18:00");
            assert_eq!(cur.total, 2);
            assert_eq!(cur.entries[0].player_id, pid(3));
            let past_label = "cron-2026-11-13T18:00";
            let label = Some(past_label);
            let past = e.top("friday", label, 10, 0, now).unwrap();
            assert_eq!((past.period.as_str(), past.total), (past_label, 1));
            assert_eq!(past.entries[0].player_id, pid(1));
            assert_eq!(
                e.rank("friday", label, pid(1), now).unwrap().unwrap().score,
                10
            );
            assert_eq!(e.rank("friday", label, pid(3), now).unwrap(), None);
            assert_eq!(e.around("friday", label, pid(1), 5, now).unwrap().total, 1);
            for bad in [
                "cron-2026-11-20T18:01",
                "cron-2026-11-19T18:00",
                "cron-2026-11-20T18:00:00",
                "cron-2026-11-20 18:00",
                "cron-2026-11-20t18:00",
                "cron-2026-11-20T6:00",
                "cron-2026-02-30T18:00",
                "2026-11-20T18:00",
                "weekly-2026-W48",
                "all",
                "cron",
                "",
            ] {
                let err = e.top("friday", Some(bad), 10, 0, now).unwrap_err();
                assert_eq!(err.field(), Some("period"), "{bad}");
            }
            // A malformed expression is refused naming the field.
            let err = e
                .add_board(cron_def("bad", "0 18 * * FRI"))
                .await
                .unwrap_err();
            assert!(matches!(
                err,
                LeaderboardError::Invalid { field: "cron", .. }
            ));
            assert!(e.boards().iter().all(|d| d.name != "bad"));
            // Another schedule under the same name conflicts.
            assert!(matches!(
                e.add_board(cron_def("friday", "0 19 * * 5")).await,
                Err(LeaderboardError::BoardExists { .. })
            ));
            // The fixed resets are unaffected.
            let s = e.submit("weekly", pid(1), 1, now).await.unwrap();
            assert_eq!(s.period, "weekly-2026-W48");
        }
        // After a restart the definition (with its schedule) and both
        // periods come back.
        let e = open_at(dir.path(), 1).await;
        assert!(e.boards().contains(&fri));
        assert_eq!(
            e.count("friday", Some("cron-2026-11-13T18:00"), now)
                .unwrap(),
            1
        );
        assert_eq!(e.count("friday", None, now).unwrap(), 2);
        drop(e);
        // A config board with a malformed expression fails the open, naming
        // the field.
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_sled(dir.path()).unwrap();
        let mut cfg = config();
        cfg.boards.push(cron_def("bad", "0 18 * *"));
        let err = LeaderboardEngine::open(storage, &cfg, 1, "eu-west")
            .err()
            .unwrap();
        assert_eq!(err.field(), Some("cron"));
    }

    /// Rebuild time for 1M entries (not asserted). Run with
    /// `cargo test --release -p meridian-replication --lib rebuild_1m -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn rebuild_1m() {
        let n: u128 = std::env::var("LB_REBUILD_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let dir = tempfile::tempdir().unwrap();
        let now = t(2026, 11, 25);
        {
            let e = open_at(dir.path(), 1).await;
            // Seed through the store directly (the same records submit writes),
            // 10k per batch, then one sync.
            let d = def("arena", SortOrder::Desc, Operator::Best);
            let start = std::time::Instant::now();
            let mut clock = HlcClock::new(1);
            let mut batch = Batch::new();
            for i in 0..n {
                let mut st = ScoreState::empty(&d);
                st.apply(((i * 7919) % 1_000_003) as i64, clock.now(unix_ms(now)))
                    .unwrap();
                let key = entry_key("arena/all", pid(i));
                let version = i as u64 + 1;
                batch.put(
                    key.clone(),
                    encode(&Stored {
                        version,
                        state: &st,
                    }),
                );
                batch.put(log_key(version), key);
                if batch.ops.len() >= 20_000 {
                    e.storage.commit_nosync(&batch).unwrap();
                    batch = Batch::new();
                }
            }
            e.storage.commit(&batch).await.unwrap();
            println!("seeded {n} entries in {:?}", start.elapsed());
            // Durable submits from 64 concurrent tasks.
            let e = std::sync::Arc::new(e);
            let start = std::time::Instant::now();
            let mut tasks = Vec::new();
            for w in 0..64u128 {
                let e = e.clone();
                tasks.push(tokio::spawn(async move {
                    for j in 0..200u128 {
                        e.submit("arena", pid((w * 1000 + j) % n), 999_000 + (j as i64), now)
                            .await
                            .unwrap();
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            let el = start.elapsed();
            println!(
                "durable submits: {} in {el:?} = {:.0}/s (64 tasks, group commit)",
                64 * 200,
                (64.0 * 200.0) / el.as_secs_f64()
            );
        }
        let start = std::time::Instant::now();
        let e = open_at(dir.path(), 1).await;
        let el = start.elapsed();
        assert_eq!(e.count("arena", None, now).unwrap(), n as u64);
        println!(
            "rebuild of {n} entries: {el:?}; index+interner memory {} bytes = {:.1} B/entry",
            e.memory_bytes(),
            e.memory_bytes() as f64 / n as f64
        );
    }
}
