//! Cross-region ticket offers over the mesh.
//!
//! A ticket waits in its home region (where the player joined). Once it has
//! waited the mode's `offer_after_s` (modes with `allow_remote_region`), the
//! home offers it to every live neighbour region within the mode's latency
//! limit for that ticket (`mm.offer`). A neighbour queues a copy; when its
//! matcher puts the copy in a match, it first claims the ticket at home
//! (`mm.claim`): the home grants the claim only while the ticket is still
//! searching there, and takes it out of its own queue in the same step, so
//! the ticket can be in one match only. With every claim granted the
//! neighbour allocates the game server and sends each home the assignment
//! (`mm.assigned`), which the home shows in `/matchmaking/status` and pushes
//! over `/ws`. A refused claim puts the neighbour's other tickets back in
//! its queue and drops the copy. Results are applied by the region that
//! hosted the match, once (leaderboards, XP and stats replicate; rewards go
//! through the economy's Raft shards).

use crate::api::Shared;
use crate::games::{RemoteAssignment, TickOutcome};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub const OFFER_SERVICE: &str = "mm.offer";
pub const CLAIM_SERVICE: &str = "mm.claim";
pub const ASSIGNED_SERVICE: &str = "mm.assigned";
/// Largest offer, claim or assignment message accepted.
pub const OFFER_BODY_MAX_BYTES: usize = 16 * 1024;
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    home: String,
    ticket: Uuid,
    mode: String,
    players: Vec<Uuid>,
    latency_ms: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    claimer: String,
    ticket: Uuid,
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    if body.len() > OFFER_BODY_MAX_BYTES {
        return Err(format!(
            "{}message too large",
            meridian_mesh::PROTOCOL_VIOLATION
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| format!("{}malformed: {e}", meridian_mesh::PROTOCOL_VIOLATION))
}

/// Register the matchmaking services; handlers hold the state weakly.
pub fn register(state: &Shared, mesh: &meridian_mesh::MeshHandle) {
    let w = Arc::downgrade(state);
    mesh.register_rpc_handler(
        OFFER_SERVICE,
        Arc::new(move |_from, body: bytes::Bytes| {
            let w = w.clone();
            async move {
                let state = w.upgrade().ok_or("node stopping")?;
                let o: Offer = decode(&body)?;
                if state.is_draining() {
                    return Err("draining".to_string());
                }
                state
                    .games
                    .adopt(&o.home, o.ticket, o.players, &o.mode, o.latency_ms)
                    .map(|_| bytes::Bytes::new())
                    .map_err(|e| e.to_string())
            }
        }),
    );
    let w = Arc::downgrade(state);
    mesh.register_rpc_handler(
        CLAIM_SERVICE,
        Arc::new(move |_from, body: bytes::Bytes| {
            let w = w.clone();
            async move {
                let state = w.upgrade().ok_or("node stopping")?;
                let c: Claim = decode(&body)?;
                if state.games.claim(c.ticket, &c.claimer) {
                    Ok(bytes::Bytes::new())
                } else {
                    Err("ticket no longer searching here".to_string())
                }
            }
        }),
    );
    let w = Arc::downgrade(state);
    mesh.register_rpc_handler(
        ASSIGNED_SERVICE,
        Arc::new(move |_from, body: bytes::Bytes| {
            let w = w.clone();
            async move {
                let state = w.upgrade().ok_or("node stopping")?;
                let a: RemoteAssignment = decode(&body)?;
                state.games.remote_assigned(a);
                Ok(bytes::Bytes::new())
            }
        }),
    );
}

/// The async half of a matcher tick: send offers, and claim then allocate
/// matches that hold offered tickets.
pub async fn after_tick(state: Shared, out: TickOutcome) {
    let Some(client) = state.with_mesh(|m| m.client()) else {
        return;
    };
    let me = state.cfg.node_name();
    for o in out.offers {
        let (ticket, mode, players, latencies) = (o.ticket, o.mode, o.players, o.latencies);
        let max = state
            .games
            .modes()
            .iter()
            .find(|m| m.name == mode)
            .map(|m| m.max_latency_ms as f64)
            .unwrap_or(0.0);
        for m in client.members() {
            if m.is_self
                || m.state != meridian_mesh::MemberState::Alive
                || m.region == state.region.name
                || m.metadata.as_ref().is_some_and(|md| md.draining)
            {
                continue;
            }
            let Some(ms) = latencies.get(&m.region).copied() else {
                continue;
            };
            if ms > max {
                continue;
            }
            let offer = Offer {
                home: me.clone(),
                ticket,
                mode: mode.clone(),
                players: players.clone(),
                latency_ms: ms,
            };
            let body = serde_json::to_vec(&offer).unwrap_or_default();
            match client
                .rpc_timeout(&m.node_id, OFFER_SERVICE, &body, RPC_TIMEOUT)
                .await
            {
                Ok(_) => {
                    metrics::counter!("matchmaking_offers_sent_total").increment(1);
                    tracing::info!(%ticket, to = %m.node_id, "ticket offered to a neighbour region");
                }
                Err(e) => tracing::debug!(%ticket, to = %m.node_id, error = %e, "offer refused"),
            }
        }
    }
    for m in out.remote_matches {
        let mut refused = Vec::new();
        for (local, home, home_ticket) in state.games.remote_tickets(&m) {
            let claim = Claim {
                claimer: me.clone(),
                ticket: home_ticket,
            };
            let body = serde_json::to_vec(&claim).unwrap_or_default();
            if client
                .rpc_timeout(&home, CLAIM_SERVICE, &body, RPC_TIMEOUT)
                .await
                .is_err()
            {
                refused.push(local);
            }
        }
        if !refused.is_empty() {
            metrics::counter!("matchmaking_claims_refused_total").increment(refused.len() as u64);
            state.games.drop_remote_match(&m, &refused);
            continue;
        }
        for (home, a) in state.games.allocate_claimed(m) {
            let body = serde_json::to_vec(&a).unwrap_or_default();
            if let Err(e) = client
                .rpc_timeout(&home, ASSIGNED_SERVICE, &body, RPC_TIMEOUT)
                .await
            {
                tracing::warn!(home, error = %e, "could not tell the home region of an assignment");
            }
        }
    }
}
