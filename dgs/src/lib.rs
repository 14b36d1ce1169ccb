//! Meridian's dedicated game servers: what runs a match once the
//! matchmaker has formed it.
//!
//! - [`token`]: per-player session tokens the node signs and the game port checks.
//! - [`game`]: the [`game::GameMode`] trait and its wire shapes; [`arena`]: the reference game.
//! - [`protocol`]: the UDP game-port messages (postcard, bounded size).
//! - [`server`]: the embedded game server multiplexing matches on one UDP socket.
//! - [`orchestrator`]: the [`orchestrator::Orchestrator`] trait (allocate, status,
//!   capacity, drain) and the embedded backend with a warm pool; exactly one
//!   [`orchestrator::SessionReport`] per session.
//! - [`process`]: the Process backend (one executable per match, local SDK HTTP endpoint).
//! - [`agones`]: the Agones backend (`GameServerAllocation` through kube-rs; the
//!   process backend's SDK endpoint for results).
//! - [`refserver`]: the reference external game server the Process backend runs
//!   (`meridian game-server`).
//! - [`bot`]: a bot client of the arena game, for tests and load bots.
//!
//! Not for: matchmaking, ratings, rewards or HTTP; the node (`meridian`)
//! owns those and consumes the reports.

pub mod agones;
pub mod arena;
pub mod bot;
pub mod game;
pub mod orchestrator;
pub mod process;
pub mod protocol;
pub mod refserver;
pub mod server;
pub mod token;

/// A player's account id (the node's `player_id`).
pub type PlayerId = uuid::Uuid;
/// One allocated game session (match).
pub type SessionId = uuid::Uuid;
