//! The [`GameMode`] trait: what an embedded match runs, tick by tick, and
//! the input/snapshot/result shapes it exchanges with the runtime.
//!
//! The runtime (see [`crate::server`]) owns the clock and the network; a
//! game mode is pure state: it never sleeps, never does I/O, and must not
//! panic on any [`Input`] (a panic fails the session, see
//! [`crate::orchestrator`]).
//!
//! Not for: game modes of external (process) servers, which speak their own
//! protocol to their clients.

use serde::{Deserialize, Serialize};

use crate::PlayerId;

/// Most players in one match: keeps a full snapshot within one datagram.
pub const PLAYERS_PER_MATCH_MAX: usize = 32;
/// Most teams in one match.
pub const TEAMS_PER_MATCH_MAX: usize = 32;

/// What the node asks a game server to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchSpec {
    /// Game mode name (as configured in the matchmaker).
    pub mode: String,
    /// Players per team; team index = position. Slot numbers on the wire
    /// follow this order (team 0 first).
    pub teams: Vec<Vec<PlayerId>>,
}

/// Why a [`MatchSpec`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("a match needs at least one player")]
    Empty,
    #[error("too many players: {0} (max {PLAYERS_PER_MATCH_MAX})")]
    TooManyPlayers(usize),
    #[error("too many teams: {0} (max {TEAMS_PER_MATCH_MAX})")]
    TooManyTeams(usize),
    #[error("player {0} appears twice")]
    DuplicatePlayer(PlayerId),
}

impl MatchSpec {
    /// Checks the limits and that no player appears twice.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.teams.len() > TEAMS_PER_MATCH_MAX {
            return Err(SpecError::TooManyTeams(self.teams.len()));
        }
        let n: usize = self.teams.iter().map(Vec::len).sum();
        if n == 0 {
            return Err(SpecError::Empty);
        }
        if n > PLAYERS_PER_MATCH_MAX {
            return Err(SpecError::TooManyPlayers(n));
        }
        let mut seen = std::collections::HashSet::with_capacity(n);
        for p in self.teams.iter().flatten() {
            if !seen.insert(*p) {
                return Err(SpecError::DuplicatePlayer(*p));
            }
        }
        Ok(())
    }

    /// The roster in slot order.
    pub fn roster(&self) -> Vec<RosterEntry> {
        self.teams
            .iter()
            .enumerate()
            .flat_map(|(team, ps)| ps.iter().map(move |p| (team, *p)))
            .enumerate()
            .map(|(slot, (team, player_id))| RosterEntry {
                slot: slot as u8,
                player_id,
                team: team as u8,
            })
            .collect()
    }
}

/// One player of a match, as the clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub slot: u8,
    pub player_id: PlayerId,
    pub team: u8,
}

/// One client input, one per client tick. `move_*` is the wanted velocity
/// as a fraction of the mode's speed limit (length at most 1); `aim_*` is
/// a direction (any length > 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Strictly increasing per player; the server acks it in snapshots.
    pub seq: u32,
    pub move_x: f32,
    pub move_y: f32,
    pub aim_x: f32,
    pub aim_y: f32,
    pub fire: bool,
}

/// Why an input was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InputRejection {
    #[error("sequence number not above the last one")]
    StaleSeq,
    #[error("movement above the speed limit or not finite")]
    SpeedLimit,
    #[error("aim not finite")]
    BadAim,
    #[error("player's input queue is full")]
    QueueFull,
    #[error("player is not in this match")]
    NotInMatch,
}

/// One player's state in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlayerSnapshot {
    pub slot: u8,
    pub x: f32,
    pub y: f32,
    pub hp: u8,
    pub alive: bool,
    pub score: u32,
    pub kills: u16,
    pub deaths: u16,
    /// Last input applied for this player: the client drops inputs up to
    /// it and replays the rest on top of this state (reconciliation).
    pub last_input_seq: u32,
}

/// The authoritative state after one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub tick: u32,
    pub ticks_left: u32,
    pub players: Vec<PlayerSnapshot>,
}

/// One player's line in a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerResult {
    pub player_id: PlayerId,
    pub team: u8,
    pub score: u32,
    pub kills: u16,
    pub deaths: u16,
    /// Whether the player ever connected.
    pub connected: bool,
}

/// The outcome of a finished game.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameResult {
    pub players: Vec<PlayerResult>,
    /// `None` on a draw.
    pub winner_team: Option<u8>,
}

/// A game mode run by the embedded runtime at a fixed tick rate.
pub trait GameMode: Send + 'static {
    /// Ticks per second; constant for the life of the match.
    fn tick_rate_hz(&self) -> u32;
    /// A rostered player connected.
    fn on_join(&mut self, player: PlayerId);
    /// A player disconnected (for good).
    fn on_leave(&mut self, player: PlayerId);
    /// Validates and queues one input; applied at the next [`GameMode::tick`].
    fn on_input(&mut self, player: PlayerId, input: Input) -> Result<(), InputRejection>;
    /// Advances one tick and returns the state to send to every player.
    fn tick(&mut self) -> Snapshot;
    /// `Some` once the game is over; the runtime then stops ticking.
    fn is_over(&self) -> Option<GameResult>;
    /// Inputs that passed `on_input` but were refused at tick time (e.g. fire
    /// rate), since the last call. For counters.
    fn take_violations(&mut self) -> u64 {
        0
    }
}

/// Builds a game for a match spec; called once per allocation.
pub type GameFactory = std::sync::Arc<dyn Fn(&MatchSpec) -> Box<dyn GameMode> + Send + Sync>;
