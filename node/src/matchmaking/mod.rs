//! Matchmaking: a pure engine that turns tickets into balanced,
//! latency-aware matches. No HTTP, no I/O, no clock: the node calls
//! [`Matchmaker::submit`] / [`Matchmaker::cancel`] from its handlers and
//! [`Matchmaker::tick`] every 100–250 ms, then allocates each
//! [`ProposedMatch`] on the game-server fleet (`meridian-dgs`) of the
//! match's region.
//!
//! - Modes come from config ([`GameModeConfig`]); each has a bounded queue.
//! - Skill is an Elo rating per mode ([`Ratings`]), updated from results.
//! - A pass anchors on the oldest ticket, takes the closest-rated tickets
//!   within its skill window (which widens with wait time) that share a
//!   region within the mode's latency limit, packs them into teams (parties
//!   stay together, greedy rating balance) and places the match in the
//!   region minimizing the worst player latency.
//! - A player has at most one active ticket; a ticket is in at most one
//!   match (asserted).
//! - Tickets waiting past `offer_after_s` are reported once as offerable to
//!   neighbour regions; the home region keeps owning them.
//!
//! Not for: transport of offers between regions, allocation, persistence
//! of ratings (load them with [`Ratings::set`]).

mod config;
mod engine;
mod rating;

pub use config::{
    ConfigError, GameModeConfig, MatchmakingConfig, LATENCY_MS_MAX, MODES_MAX,
    PLAYERS_PER_MATCH_MAX,
};
pub use engine::{
    CancelError, JoinError, Matchmaker, OfferableTicket, ProposedMatch, TickReport, TicketInfo,
    TicketRequest, TicketStatus, CANDIDATES_PER_ANCHOR_MAX, REGIONS_MAX, TICKETS_RETAINED_MAX,
    TICKET_STATUS_RETENTION_S,
};
pub use rating::{RatingChange, Ratings, RATING_INITIAL, RATING_K};

/// A player's account id.
pub type PlayerId = uuid::Uuid;
/// A matchmaking ticket.
pub type TicketId = uuid::Uuid;
/// A formed match (the node uses it as the game session id or maps it to one).
pub type MatchId = uuid::Uuid;

#[cfg(test)]
mod tests;
