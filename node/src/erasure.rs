//! GDPR erasure of a player in every region.
//!
//! Erasing writes a tombstone `gone/{player_id}` (replicated like accounts)
//! and then, on this node and on every node that merges the tombstone,
//! deletes the player's account, name and email claims, device links,
//! profile, leaderboard entries and stats. Tombstones are kept forever (a
//! few dozen bytes per erased player): a replica that was partitioned or
//! down when the player was erased can only bring back stale copies, and
//! every merge of a key that belongs to an erased player is dropped, so
//! nothing is resurrected. Access and refresh tokens of an erased player
//! are refused at once.
//!
//! Kept on purpose: the economy's transaction history (financial records
//! under a legal retention duty; it holds the player id only, no personal
//! data) and telemetry events until their retention deletes them.

use crate::api::Shared;
use crate::auth::accounts::Account;
use meridian_replication::{Batch, StoreError};
use serde::{Deserialize, Serialize};

/// Replicated prefix of the tombstones.
pub const TOMBSTONE_PREFIX: &str = "gone/";
/// Most device links scanned when erasing one player.
pub const DEVICE_SCAN_MAX: usize = 1_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tombstone {
    pub player_id: String,
    pub erased_at: String,
    pub region: String,
}

pub fn tombstone_key(player_id: &str) -> String {
    format!("{TOMBSTONE_PREFIX}{player_id}")
}

/// Whether `player_id` was erased (here or, once replicated, anywhere).
pub fn is_erased(state: &Shared, player_id: &str) -> bool {
    matches!(
        state.storage.get(tombstone_key(player_id).as_bytes()),
        Ok(Some(_))
    )
}

/// Erase a player everywhere: tombstone first (so a crash half-way finishes
/// on the next merge or retry), then the local data. Idempotent.
pub async fn erase(state: &Shared, player_id: &str) -> Result<(), StoreError> {
    // Free the player's names in the directory (best effort: a shard
    // without quorum keeps the name reserved).
    if let Ok(Some(a)) = state.accounts.get(player_id) {
        let mut names = vec![format!("user:{}", a.username_key)];
        if let Some(e) = &a.email {
            names.push(format!("mail:{e}"));
        }
        state.accounts.release_names(player_id, names).await;
    }
    let key = tombstone_key(player_id);
    if state.storage.get(key.as_bytes())?.is_none() {
        let t = Tombstone {
            player_id: player_id.to_string(),
            erased_at: chrono::Utc::now().to_rfc3339(),
            region: state.region.name.clone(),
        };
        let mut b = Batch::new();
        b.put(key, serde_json::to_vec(&t).unwrap_or_default());
        state.storage.commit(&b).await?;
    }
    erase_local(state, player_id).await
}

/// Delete this node's copy of a tombstoned player's data.
pub async fn erase_local(state: &Shared, player_id: &str) -> Result<(), StoreError> {
    let mut b = Batch::new();
    let acct_key = format!("acct/{player_id}");
    if let Some(raw) = state.storage.get(acct_key.as_bytes())? {
        b.delete(acct_key);
        if let Ok(a) = serde_json::from_slice::<Account>(&raw) {
            let owned = |k: &str| -> Result<bool, StoreError> {
                Ok(state.storage.get(k.as_bytes())?.as_deref() == Some(player_id.as_bytes()))
            };
            let user = format!("user/{}", a.username_key);
            if owned(&user)? {
                b.delete(user);
            }
            if let Some(e) = &a.email {
                let mail = format!("mail/{e}");
                if owned(&mail)? {
                    b.delete(mail);
                }
            }
        }
    }
    for (k, v) in state.storage.scan_prefix(b"dev/", DEVICE_SCAN_MAX)? {
        if v == player_id.as_bytes() {
            b.delete(k);
        }
    }
    b.delete(format!("prof/{player_id}"));
    state.storage.commit(&b).await?;
    if let Ok(uuid) = uuid::Uuid::parse_str(player_id) {
        if let Err(e) = state.leaderboards.erase_player(uuid).await {
            tracing::warn!(player_id, error = %e, "erasing leaderboard entries");
        }
    }
    tracing::info!(player_id, "player erased on this node");
    Ok(())
}

/// The player a replicated key belongs to, when it belongs to one.
pub fn owner_of(key: &str, value: &[u8]) -> Option<String> {
    for p in ["acct/", "prof/"] {
        if let Some(id) = key.strip_prefix(p) {
            return Some(id.to_string());
        }
    }
    if key.starts_with("user/") || key.starts_with("mail/") || key.starts_with("dev/") {
        return std::str::from_utf8(value).ok().map(str::to_string);
    }
    if key.starts_with("rt/") || key.starts_with("rtf/") {
        #[derive(Deserialize)]
        struct Owner {
            player_id: String,
        }
        return serde_json::from_slice::<Owner>(value)
            .ok()
            .map(|o| o.player_id);
    }
    None
}
