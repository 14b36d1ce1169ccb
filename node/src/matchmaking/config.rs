//! Game-mode configuration of the matchmaker.

use serde::{Deserialize, Serialize};

/// Most players in one match (the embedded game server's snapshot limit).
pub const PLAYERS_PER_MATCH_MAX: u32 = 32;
/// Highest latency a ticket or mode may name, in milliseconds.
pub const LATENCY_MS_MAX: u32 = 10_000;
/// Most game modes in one config.
pub const MODES_MAX: usize = 64;

fn default_offer_after_s() -> u64 {
    10
}
fn default_queue_tickets_max() -> usize {
    10_000
}

/// One game mode, e.g. `[[matchmaking.modes]]` in the node config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GameModeConfig {
    pub name: String,
    /// Number of teams (2 for 5v5, 8 for an 8-player free-for-all).
    pub teams: u32,
    pub team_size: u32,
    /// A match is only placed in a region where every player is within this.
    pub max_latency_ms: u32,
    /// Rating distance accepted at once, in rating points.
    pub skill_window_start: f64,
    /// How much the window widens per second waited, in rating points.
    pub skill_window_widen_per_s: f64,
    /// Tickets still unmatched after this expire.
    pub max_wait_s: u64,
    /// Whether a match may be placed in another region than this node's.
    pub allow_remote_region: bool,
    /// Tickets waiting this long are reported as offerable to neighbour regions.
    #[serde(default = "default_offer_after_s")]
    pub offer_after_s: u64,
    /// Searching tickets of this mode at once; more get `QueueFull`.
    #[serde(default = "default_queue_tickets_max")]
    pub queue_tickets_max: usize,
}

impl GameModeConfig {
    pub fn players_per_match(&self) -> u32 {
        self.teams.saturating_mul(self.team_size)
    }

    /// Skill window after waiting `waited_s` seconds.
    pub fn skill_window(&self, waited_s: f64) -> f64 {
        self.skill_window_start + self.skill_window_widen_per_s * waited_s.max(0.0)
    }
}

/// The matchmaker's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchmakingConfig {
    pub modes: Vec<GameModeConfig>,
}

impl Default for MatchmakingConfig {
    fn default() -> Self {
        let mode = |name: &str, teams, team_size| GameModeConfig {
            name: name.into(),
            teams,
            team_size,
            max_latency_ms: 150,
            skill_window_start: 100.0,
            skill_window_widen_per_s: 25.0,
            max_wait_s: 120,
            allow_remote_region: true,
            offer_after_s: default_offer_after_s(),
            queue_tickets_max: default_queue_tickets_max(),
        };
        Self {
            modes: vec![mode("duel", 2, 1), mode("5v5", 2, 5), mode("ffa8", 8, 1)],
        }
    }
}

/// A configuration mistake.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("mode {0:?}: name must be 1..=64 characters")]
    BadName(String),
    #[error("mode {0:?} is defined twice")]
    DuplicateMode(String),
    #[error("mode {mode:?}: {field} is out of range")]
    OutOfRange { mode: String, field: &'static str },
    #[error("too many modes (max {MODES_MAX})")]
    TooManyModes,
    #[error("local region {0:?} is not in the region list")]
    UnknownLocalRegion(String),
    #[error("too many regions (max {max})")]
    TooManyRegions { max: usize },
}

impl MatchmakingConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.modes.len() > MODES_MAX {
            return Err(ConfigError::TooManyModes);
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.modes {
            if m.name.is_empty() || m.name.len() > 64 {
                return Err(ConfigError::BadName(m.name.clone()));
            }
            if !seen.insert(m.name.as_str()) {
                return Err(ConfigError::DuplicateMode(m.name.clone()));
            }
            let bad = |field| ConfigError::OutOfRange {
                mode: m.name.clone(),
                field,
            };
            if m.teams == 0 || m.team_size == 0 || m.players_per_match() > PLAYERS_PER_MATCH_MAX {
                return Err(bad("teams/team_size"));
            }
            if m.max_latency_ms == 0 || m.max_latency_ms > LATENCY_MS_MAX {
                return Err(bad("max_latency_ms"));
            }
            if !(m.skill_window_start.is_finite() && m.skill_window_start >= 0.0) {
                return Err(bad("skill_window_start"));
            }
            if !(m.skill_window_widen_per_s.is_finite() && m.skill_window_widen_per_s >= 0.0) {
                return Err(bad("skill_window_widen_per_s"));
            }
            if m.max_wait_s == 0 || m.max_wait_s > 3_600 {
                return Err(bad("max_wait_s"));
            }
            if m.queue_tickets_max == 0 || m.queue_tickets_max > 1_000_000 {
                return Err(bad("queue_tickets_max"));
            }
        }
        Ok(())
    }
}
