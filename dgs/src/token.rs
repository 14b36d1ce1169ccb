//! Per-player session tokens: what a client presents on the game port to
//! prove the node matched it into a given session.
//!
//! A token is [`TOKEN_BYTES`] bytes: `version (1) | session_id (16) |
//! player_id (16) | expires_unix_ms (8, big-endian) | HMAC-SHA256 tag (32)`.
//! The tag covers everything before it and is keyed with the node's secret,
//! so only the node (and the game servers it runs) can mint or check tokens.
//!
//! Verification here is stateless (signature, expiry, expected session).
//! Replay after a disconnect is stateful and lives in [`TokenLedger`], which
//! the game server keeps per session.
//!
//! Not for: player authentication against the HTTP API (that is the node's
//! JWT access token).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;

use crate::{PlayerId, SessionId};

/// Encoded size of a token, in bytes.
pub const TOKEN_BYTES: usize = 1 + 16 + 16 + 8 + TAG_BYTES;
/// Minimum length of the node secret, in bytes.
pub const SECRET_BYTES_MIN: usize = 32;
const TAG_BYTES: usize = 32;
const TOKEN_VERSION: u8 = 1;
const BODY_BYTES: usize = TOKEN_BYTES - TAG_BYTES;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed (wrong length or version)")]
    Malformed,
    #[error("token signature is invalid")]
    Forged,
    #[error("token has expired")]
    Expired,
    #[error("token is for another session")]
    WrongSession,
    #[error("token was already used by a player who disconnected, or from another address")]
    Replayed,
    #[error("node secret must be at least {SECRET_BYTES_MIN} bytes")]
    WeakSecret,
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    pub session_id: SessionId,
    pub player_id: PlayerId,
    pub expires_unix_ms: u64,
}

/// An encoded token. Send it to clients as bytes or with [`SessionToken::to_base64`].
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(pub [u8; TOKEN_BYTES]);

impl SessionToken {
    /// URL-safe base64 without padding, for JSON.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses [`SessionToken::to_base64`] output.
    pub fn from_base64(s: &str) -> Result<Self, TokenError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let arr: [u8; TOKEN_BYTES] = bytes.try_into().map_err(|_| TokenError::Malformed)?;
        Ok(Self(arr))
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

/// Mints and verifies tokens with the node's HMAC-SHA256 secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TokenSigner {
    /// A signer keyed with `secret` (at least [`SECRET_BYTES_MIN`] bytes).
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(TokenError::WeakSecret);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// A signer with a fresh random secret (tokens die with the process).
    pub fn random() -> Self {
        let mut secret = [0u8; SECRET_BYTES_MIN];
        aws_lc_rs::rand::fill(&mut secret).expect("system RNG failed");
        Self::new(&secret).expect("secret has the minimum length")
    }

    /// Mints a token for `player_id` in `session_id`, valid until `expires_unix_ms`.
    pub fn issue(
        &self,
        session_id: SessionId,
        player_id: PlayerId,
        expires_unix_ms: u64,
    ) -> SessionToken {
        let mut out = [0u8; TOKEN_BYTES];
        out[0] = TOKEN_VERSION;
        out[1..17].copy_from_slice(session_id.as_bytes());
        out[17..33].copy_from_slice(player_id.as_bytes());
        out[33..41].copy_from_slice(&expires_unix_ms.to_be_bytes());
        let tag = hmac::sign(&self.key, &out[..BODY_BYTES]);
        out[BODY_BYTES..].copy_from_slice(tag.as_ref());
        SessionToken(out)
    }

    /// Checks length, version, signature and expiry (in that order; the
    /// signature is checked before any field is trusted).
    pub fn verify(&self, token: &[u8], now_unix_ms: u64) -> Result<TokenClaims, TokenError> {
        if token.len() != TOKEN_BYTES || token[0] != TOKEN_VERSION {
            return Err(TokenError::Malformed);
        }
        hmac::verify(&self.key, &token[..BODY_BYTES], &token[BODY_BYTES..])
            .map_err(|_| TokenError::Forged)?;
        let session_id = SessionId::from_bytes(token[1..17].try_into().expect("16 bytes"));
        let player_id = PlayerId::from_bytes(token[17..33].try_into().expect("16 bytes"));
        let expires_unix_ms = u64::from_be_bytes(token[33..41].try_into().expect("8 bytes"));
        if now_unix_ms >= expires_unix_ms {
            return Err(TokenError::Expired);
        }
        Ok(TokenClaims {
            session_id,
            player_id,
            expires_unix_ms,
        })
    }

    /// [`TokenSigner::verify`] plus a check that the token is for `session_id`.
    pub fn verify_for(
        &self,
        token: &[u8],
        session_id: SessionId,
        now_unix_ms: u64,
    ) -> Result<TokenClaims, TokenError> {
        let claims = self.verify(token, now_unix_ms)?;
        if claims.session_id != session_id {
            return Err(TokenError::WrongSession);
        }
        Ok(claims)
    }
}

/// Connection state of one player in one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerEntry {
    Connected(SocketAddr),
    Disconnected,
}

/// Result of a successful [`TokenLedger::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// First connect of this player.
    New,
    /// The same player re-sent Connect from the same address (lost Welcome).
    Repeat,
}

/// Per-session record of who connected from where, so that a token cannot
/// be reused after its player disconnected or from a second address.
#[derive(Debug, Default)]
pub struct TokenLedger {
    entries: HashMap<PlayerId, LedgerEntry>,
}

impl TokenLedger {
    /// Records that `player` connects from `addr`.
    pub fn admit(&mut self, player: PlayerId, addr: SocketAddr) -> Result<Admission, TokenError> {
        match self.entries.get(&player) {
            None => {
                self.entries.insert(player, LedgerEntry::Connected(addr));
                Ok(Admission::New)
            }
            Some(LedgerEntry::Connected(a)) if *a == addr => Ok(Admission::Repeat),
            Some(_) => Err(TokenError::Replayed),
        }
    }

    /// Marks `player` as gone for good; returns the address it had.
    pub fn disconnect(&mut self, player: PlayerId) -> Option<SocketAddr> {
        match self.entries.insert(player, LedgerEntry::Disconnected) {
            Some(LedgerEntry::Connected(a)) => Some(a),
            _ => None,
        }
    }

    /// Every player who ever connected (connected or not).
    pub fn seen(&self) -> impl Iterator<Item = PlayerId> + '_ {
        self.entries.keys().copied()
    }

    /// Addresses of the players currently connected.
    pub fn connected(&self) -> impl Iterator<Item = (PlayerId, SocketAddr)> + '_ {
        self.entries.iter().filter_map(|(p, e)| match e {
            LedgerEntry::Connected(a) => Some((*p, *a)),
            LedgerEntry::Disconnected => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (SessionId, PlayerId) {
        (uuid::Uuid::new_v4(), uuid::Uuid::new_v4())
    }

    #[test]
    fn round_trip_and_base64() {
        let s = TokenSigner::random();
        let (sid, pid) = ids();
        let t = s.issue(sid, pid, 2_000);
        assert_eq!(t.0.len(), TOKEN_BYTES);
        let c = s.verify_for(&t.0, sid, 1_999).unwrap();
        assert_eq!((c.session_id, c.player_id), (sid, pid));
        let back = SessionToken::from_base64(&t.to_base64()).unwrap();
        assert_eq!(back, t);
        assert_eq!(SessionToken::from_base64("!!"), Err(TokenError::Malformed));
    }

    #[test]
    fn expiry_edge() {
        let s = TokenSigner::random();
        let (sid, pid) = ids();
        let t = s.issue(sid, pid, 1_000);
        assert!(s.verify(&t.0, 999).is_ok());
        assert_eq!(s.verify(&t.0, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn forged_and_other_key_and_other_session() {
        let s = TokenSigner::random();
        let other = TokenSigner::random();
        let (sid, pid) = ids();
        let mut t = s.issue(sid, pid, u64::MAX);
        assert_eq!(other.verify(&t.0, 0), Err(TokenError::Forged));
        assert_eq!(
            s.verify_for(&t.0, uuid::Uuid::new_v4(), 0),
            Err(TokenError::WrongSession)
        );
        // Changing the player id without the key breaks the tag.
        t.0[20] ^= 1;
        assert_eq!(s.verify(&t.0, 0), Err(TokenError::Forged));
        assert_eq!(s.verify(&t.0[..10], 0), Err(TokenError::Malformed));
        let mut v = t.0;
        v[0] = 9;
        assert_eq!(s.verify(&v, 0), Err(TokenError::Malformed));
    }

    #[test]
    fn weak_secret_edge() {
        assert_eq!(
            TokenSigner::new(&[0; SECRET_BYTES_MIN - 1]).unwrap_err(),
            TokenError::WeakSecret
        );
        assert!(TokenSigner::new(&[0; SECRET_BYTES_MIN]).is_ok());
    }

    #[test]
    fn ledger_rejects_replay_after_disconnect_and_second_address() {
        let mut l = TokenLedger::default();
        let p = uuid::Uuid::new_v4();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        assert_eq!(l.admit(p, a), Ok(Admission::New));
        assert_eq!(l.admit(p, a), Ok(Admission::Repeat));
        assert_eq!(l.admit(p, b), Err(TokenError::Replayed));
        assert_eq!(l.disconnect(p), Some(a));
        assert_eq!(l.admit(p, a), Err(TokenError::Replayed));
        assert_eq!(l.connected().count(), 0);
    }
}
