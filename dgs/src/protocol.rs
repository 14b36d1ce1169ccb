//! The game-port wire protocol: postcard-encoded messages, one per UDP
//! datagram, at most [`PACKET_BYTES_MAX`] bytes.
//!
//! Client → server: [`ClientMsg`]. Server → client: [`ServerMsg`]. The
//! server never answers a packet it could not authenticate (no
//! amplification), so a client retries `Connect` until it gets `Welcome`.
//!
//! Not for: reliability or ordering; snapshots are idempotent state and
//! `MatchEnded` is sent several times.

use serde::{Deserialize, Serialize};

use crate::game::{Input, RosterEntry, Snapshot};
use crate::SessionId;

/// Largest datagram either side sends or accepts, in bytes (fits a 1280-byte IPv6 MTU).
pub const PACKET_BYTES_MAX: usize = 1200;

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First packet: the session token from the matchmaker (raw bytes).
    Connect {
        token: Vec<u8>,
    },
    Input(Input),
    Ping {
        nonce: u64,
    },
    /// Leaving for good; the token cannot be used again.
    Disconnect,
}

/// One player's line in [`ServerMsg::MatchEnded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotResult {
    pub slot: u8,
    pub score: u32,
    pub kills: u16,
    pub deaths: u16,
}

/// Why a match stopped without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// The match task crashed or stalled.
    Crashed,
    /// The node drained and the match hit the drain deadline.
    DrainDeadline,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    Welcome {
        session_id: SessionId,
        your_slot: u8,
        tick_rate_hz: u32,
        roster: Vec<RosterEntry>,
    },
    Snapshot(Snapshot),
    Pong {
        nonce: u64,
    },
    MatchEnded {
        winner_team: Option<u8>,
        players: Vec<SlotResult>,
    },
    /// The match stopped without a result; no rewards are granted.
    MatchAborted {
        reason: AbortReason,
    },
}

impl ServerMsg {
    /// `MatchEnded` for a finished game: each player's result under their
    /// roster slot (players without a slot are left out).
    pub fn match_ended(
        result: &crate::game::GameResult,
        slot_of: &std::collections::HashMap<crate::PlayerId, u8>,
    ) -> Self {
        ServerMsg::MatchEnded {
            winner_team: result.winner_team,
            players: result
                .players
                .iter()
                .filter_map(|p| {
                    Some(SlotResult {
                        slot: *slot_of.get(&p.player_id)?,
                        score: p.score,
                        kills: p.kills,
                        deaths: p.deaths,
                    })
                })
                .collect(),
        }
    }
}

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram larger than {PACKET_BYTES_MAX} bytes")]
    TooLarge,
    #[error("datagram is not a valid message")]
    Garbage,
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message does not fit in {PACKET_BYTES_MAX} bytes")]
    TooLarge,
}

fn decode<'a, T: Deserialize<'a>>(buf: &'a [u8]) -> Result<T, DecodeError> {
    if buf.len() > PACKET_BYTES_MAX {
        return Err(DecodeError::TooLarge);
    }
    // Trailing bytes are garbage too: one message per datagram.
    match postcard::take_from_bytes::<T>(buf) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(DecodeError::Garbage),
    }
}

fn encode<T: Serialize>(msg: &T, buf: &mut [u8; PACKET_BYTES_MAX]) -> Result<usize, EncodeError> {
    postcard::to_slice(msg, buf)
        .map(|s| s.len())
        .map_err(|_| EncodeError::TooLarge)
}

impl ClientMsg {
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        decode(buf)
    }
    /// Encodes into `buf`, returning the length used.
    pub fn encode(&self, buf: &mut [u8; PACKET_BYTES_MAX]) -> Result<usize, EncodeError> {
        encode(self, buf)
    }
}

impl ServerMsg {
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        decode(buf)
    }
    /// Encodes into `buf`, returning the length used.
    pub fn encode(&self, buf: &mut [u8; PACKET_BYTES_MAX]) -> Result<usize, EncodeError> {
        encode(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::{PlayerSnapshot, PLAYERS_PER_MATCH_MAX};
    use proptest::prelude::*;

    #[test]
    fn full_match_messages_fit_one_datagram() {
        let mut buf = [0u8; PACKET_BYTES_MAX];
        let snap = ServerMsg::Snapshot(Snapshot {
            tick: u32::MAX,
            ticks_left: u32::MAX,
            players: (0..PLAYERS_PER_MATCH_MAX as u8)
                .map(|slot| PlayerSnapshot {
                    slot,
                    x: 1.5,
                    y: 2.5,
                    hp: 100,
                    alive: true,
                    score: u32::MAX,
                    kills: u16::MAX,
                    deaths: u16::MAX,
                    last_input_seq: u32::MAX,
                })
                .collect(),
        });
        let n = snap.encode(&mut buf).unwrap();
        assert_eq!(ServerMsg::decode(&buf[..n]).unwrap(), snap);
        let welcome = ServerMsg::Welcome {
            session_id: uuid::Uuid::new_v4(),
            your_slot: 0,
            tick_rate_hz: 60,
            roster: (0..PLAYERS_PER_MATCH_MAX as u8)
                .map(|slot| RosterEntry {
                    slot,
                    player_id: uuid::Uuid::new_v4(),
                    team: slot,
                })
                .collect(),
        };
        assert!(welcome.encode(&mut buf).is_ok());
        let ended = ServerMsg::MatchEnded {
            winner_team: Some(1),
            players: (0..PLAYERS_PER_MATCH_MAX as u8)
                .map(|slot| SlotResult {
                    slot,
                    score: u32::MAX,
                    kills: u16::MAX,
                    deaths: u16::MAX,
                })
                .collect(),
        };
        assert!(ended.encode(&mut buf).is_ok());
    }

    #[test]
    fn size_edge() {
        let ok = vec![0u8; PACKET_BYTES_MAX];
        assert_ne!(ClientMsg::decode(&ok), Err(DecodeError::TooLarge));
        let big = vec![0u8; PACKET_BYTES_MAX + 1];
        assert_eq!(ClientMsg::decode(&big), Err(DecodeError::TooLarge));
        let mut buf = [0u8; PACKET_BYTES_MAX];
        let huge = ClientMsg::Connect {
            token: vec![0; PACKET_BYTES_MAX],
        };
        assert_eq!(huge.encode(&mut buf), Err(EncodeError::TooLarge));
    }

    #[test]
    fn trailing_bytes_are_garbage() {
        let mut buf = [0u8; PACKET_BYTES_MAX];
        let n = ClientMsg::Ping { nonce: 7 }.encode(&mut buf).unwrap();
        assert!(ClientMsg::decode(&buf[..n]).is_ok());
        assert_eq!(ClientMsg::decode(&buf[..n + 1]), Err(DecodeError::Garbage));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
            let _ = ClientMsg::decode(&bytes);
            let _ = ServerMsg::decode(&bytes);
        }
    }
}
