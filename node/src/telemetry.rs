//! Telemetry ingestion: validated event batches, deduplicated by `event_id`,
//! appended to a local log partitioned by the event's UTC hour.
//!
//! Keys: `tel/log/{YYYYMMDDHH}/{timestamp_ms:013}/{event_id}` → [`StoredEvent`]
//! and `tel/id/{event_id}` → the log key (the dedup index). A retention task
//! deletes whole hours older than `retention_hours`, with their dedup keys;
//! an event id is therefore deduplicated for as long as its event is kept.

use chrono::{DateTime, TimeZone, Utc};
use meridian_replication::{Batch, Storage, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

pub const EVENT_ID_MAX_BYTES: usize = 64;
pub const EVENT_TYPE_MAX_BYTES: usize = 64;
/// Events more than this far in the future are refused (clock skew margin).
pub const EVENT_FUTURE_MAX_S: i64 = 3600;
/// Log keys a single query examines before returning a cursor.
pub const QUERY_SCAN_MAX_KEYS: usize = 50_000;
/// Keys the retention task deletes per batch.
const RETENTION_DELETE_BATCH: usize = 1000;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    pub event_id: String,
    pub session_id: Option<String>,
    pub event_type: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// RFC 3339 time or Unix milliseconds.
    #[schema(value_type = String)]
    pub timestamp: Timestamp,
    /// Only servers may attribute events to a player; players' events are theirs.
    pub player_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Timestamp {
    Millis(i64),
    Text(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StoredEvent {
    pub event_id: String,
    pub player_id: Option<String>,
    pub session_id: Option<String>,
    pub event_type: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub timestamp: String,
    pub received_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, Default, Clone)]
pub struct Query {
    pub player_id: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
    pub cursor: Option<Vec<u8>>,
}

pub struct Telemetry {
    storage: Storage,
    cfg: crate::config::TelemetryConfig,
}

fn invalid(field: String, message: impl Into<String>) -> TelemetryError {
    TelemetryError::Invalid {
        field,
        message: message.into(),
    }
}

fn hour_key(t: &DateTime<Utc>) -> String {
    t.format("%Y%m%d%H").to_string()
}

fn valid_token(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

impl Telemetry {
    pub fn new(storage: Storage, cfg: crate::config::TelemetryConfig) -> Self {
        Self { storage, cfg }
    }

    pub fn config(&self) -> &crate::config::TelemetryConfig {
        &self.cfg
    }

    fn parse_time(
        &self,
        i: usize,
        ts: &Timestamp,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, TelemetryError> {
        let field = format!("events[{i}].timestamp");
        let t = match ts {
            Timestamp::Millis(ms) => Utc
                .timestamp_millis_opt(*ms)
                .single()
                .ok_or_else(|| invalid(field.clone(), "not a valid Unix time in ms"))?,
            Timestamp::Text(s) => DateTime::parse_from_rfc3339(s)
                .map_err(|e| invalid(field.clone(), format!("not RFC 3339: {e}")))?
                .with_timezone(&Utc),
        };
        if t > now + chrono::Duration::seconds(EVENT_FUTURE_MAX_S) {
            return Err(invalid(field, "more than an hour in the future"));
        }
        if t < now - chrono::Duration::hours(self.cfg.retention_hours as i64) {
            return Err(invalid(field, "older than the retention period"));
        }
        Ok(t)
    }

    /// Validate and store a batch. `caller_player` is set for the player role
    /// (events are attributed to them); servers may set `player_id`.
    /// Returns `(accepted, duplicates)`.
    pub async fn ingest(
        &self,
        events: &[EventIn],
        caller_player: Option<&str>,
    ) -> Result<(usize, usize), TelemetryError> {
        if events.is_empty() {
            return Err(invalid("events".into(), "must hold at least one event"));
        }
        if events.len() > self.cfg.batch_events_max {
            return Err(invalid(
                "events".into(),
                format!("at most {} events per batch", self.cfg.batch_events_max),
            ));
        }
        let now = Utc::now();
        let received_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut prepared = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            if !valid_token(&e.event_id, EVENT_ID_MAX_BYTES, &['-', '_', ':', '.']) {
                return Err(invalid(
                    format!("events[{i}].event_id"),
                    format!("1-{EVENT_ID_MAX_BYTES} of letters, digits, '-', '_', ':', '.'"),
                ));
            }
            if !valid_token(&e.event_type, EVENT_TYPE_MAX_BYTES, &['_', '.']) {
                return Err(invalid(
                    format!("events[{i}].event_type"),
                    format!("1-{EVENT_TYPE_MAX_BYTES} of letters, digits, '_', '.'"),
                ));
            }
            if let Some(s) = &e.session_id {
                if !valid_token(s, EVENT_ID_MAX_BYTES, &['-', '_', ':', '.']) {
                    return Err(invalid(format!("events[{i}].session_id"), "not a valid id"));
                }
            }
            let payload_len = serde_json::to_vec(&e.payload)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if payload_len > self.cfg.event_payload_max_bytes {
                return Err(invalid(
                    format!("events[{i}].payload"),
                    format!("larger than {} bytes", self.cfg.event_payload_max_bytes),
                ));
            }
            let player_id = match (caller_player, &e.player_id) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        format!("events[{i}].player_id"),
                        "players cannot attribute events; omit it",
                    ))
                }
                (Some(p), None) => Some(p.to_string()),
                (None, p) => p.clone(),
            };
            let t = self.parse_time(i, &e.timestamp, now)?;
            let stored = StoredEvent {
                event_id: e.event_id.clone(),
                player_id,
                session_id: e.session_id.clone(),
                event_type: e.event_type.clone(),
                payload: e.payload.clone(),
                timestamp: t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                received_at: received_at.clone(),
            };
            let log_key = format!(
                "tel/log/{}/{:013}/{}",
                hour_key(&t),
                t.timestamp_millis().max(0),
                e.event_id
            );
            prepared.push((stored, log_key));
        }
        // Two attempts: a concurrent batch carrying the same id can win the race.
        for _ in 0..2 {
            let mut seen = HashSet::new();
            let mut b = Batch::new();
            let mut accepted = 0;
            for (ev, log_key) in &prepared {
                let id_key = format!("tel/id/{}", ev.event_id);
                if !seen.insert(ev.event_id.as_str())
                    || self.storage.get(id_key.as_bytes())?.is_some()
                {
                    continue;
                }
                b.require_absent(id_key.clone())
                    .put(id_key, log_key.clone())
                    .put(log_key.clone(), serde_json::to_vec(ev).unwrap_or_default());
                accepted += 1;
            }
            if b.is_empty() {
                return Ok((0, events.len()));
            }
            match self.storage.commit(&b).await {
                Ok(()) => return Ok((accepted, events.len() - accepted)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TelemetryError::Store(StoreError::Conflict("tel/id".into())))
    }

    /// Events from `since` on (oldest first), filtered; returns the next cursor.
    pub fn query(&self, q: &Query) -> Result<(Vec<StoredEvent>, Option<Vec<u8>>), TelemetryError> {
        let start = match (&q.cursor, &q.since) {
            (Some(c), _) => {
                if !c.starts_with(b"tel/log/") {
                    return Err(invalid("cursor".into(), "not a cursor from this endpoint"));
                }
                let mut k = c.clone();
                k.push(0); // strictly after the cursor key
                k
            }
            (None, Some(t)) => format!(
                "tel/log/{}/{:013}",
                hour_key(t),
                t.timestamp_millis().max(0)
            )
            .into_bytes(),
            (None, None) => b"tel/log/".to_vec(),
        };
        let end = b"tel/log0".to_vec();
        let mut out = Vec::new();
        let mut from = start;
        let mut scanned = 0;
        let page = 1024;
        loop {
            let rows = self.storage.range(&from, Some(&end), page)?;
            let n = rows.len();
            for (k, v) in rows {
                scanned += 1;
                let ev: StoredEvent = match serde_json::from_slice(&v) {
                    Ok(ev) => ev,
                    Err(_) => continue,
                };
                let keep = q
                    .player_id
                    .as_ref()
                    .is_none_or(|p| ev.player_id.as_ref() == Some(p))
                    && q.event_type.as_ref().is_none_or(|t| &ev.event_type == t);
                if keep {
                    out.push(ev);
                    if out.len() >= q.limit {
                        return Ok((out, Some(k)));
                    }
                }
                if scanned >= QUERY_SCAN_MAX_KEYS {
                    return Ok((out, Some(k)));
                }
                from = k;
                from.push(0);
            }
            if n < page {
                return Ok((out, None));
            }
        }
    }

    /// Delete hours older than the retention; returns events deleted.
    pub async fn enforce_retention(&self, now: DateTime<Utc>) -> Result<usize, TelemetryError> {
        let cutoff = now - chrono::Duration::hours(self.cfg.retention_hours as i64);
        let end = format!("tel/log/{}", hour_key(&cutoff)).into_bytes();
        let mut deleted = 0;
        loop {
            let rows = self
                .storage
                .range(b"tel/log/", Some(&end), RETENTION_DELETE_BATCH)?;
            if rows.is_empty() {
                return Ok(deleted);
            }
            let mut b = Batch::new();
            for (k, _) in &rows {
                if let Some(id) = std::str::from_utf8(k)
                    .ok()
                    .and_then(|s| s.rsplit('/').next())
                {
                    b.delete(format!("tel/id/{id}"));
                }
                b.delete(k.clone());
            }
            self.storage.commit(&b).await?;
            deleted += rows.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, ty: &str) -> EventIn {
        EventIn {
            event_id: id.into(),
            session_id: None,
            event_type: ty.into(),
            payload: serde_json::json!({"k": 1}),
            timestamp: Timestamp::Millis(Utc::now().timestamp_millis()),
            player_id: None,
        }
    }

    async fn tel() -> (tempfile::TempDir, Telemetry) {
        let d = tempfile::tempdir().unwrap();
        let s = Storage::open_sled(d.path()).unwrap();
        (d, Telemetry::new(s, Default::default()))
    }

    #[tokio::test]
    async fn dedup_within_and_across_batches() {
        let (_d, t) = tel().await;
        let r = t
            .ingest(&[ev("a", "x"), ev("a", "x"), ev("b", "y")], Some("p1"))
            .await
            .unwrap();
        assert_eq!(r, (2, 1));
        let r = t
            .ingest(&[ev("a", "x"), ev("c", "x")], Some("p1"))
            .await
            .unwrap();
        assert_eq!(r, (1, 1));
        let (all, cursor) = t
            .query(&Query {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 3);
        assert!(cursor.is_none());
        let (xs, _) = t
            .query(&Query {
                limit: 100,
                event_type: Some("x".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(xs.len(), 2);
        assert!(xs.iter().all(|e| e.player_id.as_deref() == Some("p1")));
    }

    #[tokio::test]
    async fn batch_limit_edge_and_field_errors() {
        let (_d, t) = tel().await;
        let max = t.cfg.batch_events_max;
        let ok: Vec<EventIn> = (0..max).map(|i| ev(&format!("e{i}"), "x")).collect();
        assert_eq!(t.ingest(&ok, None).await.unwrap().0, max);
        let over: Vec<EventIn> = (0..=max).map(|i| ev(&format!("f{i}"), "x")).collect();
        let e = t.ingest(&over, None).await.unwrap_err();
        assert!(e.to_string().starts_with("events:"), "{e}");
        let mut bad = ev("g", "x");
        bad.timestamp = Timestamp::Text("yesterday".into());
        let e = t.ingest(&[bad], None).await.unwrap_err();
        assert!(e.to_string().starts_with("events[0].timestamp"), "{e}");
        let e = t.ingest(&[ev("h", "Bad Type")], None).await.unwrap_err();
        assert!(e.to_string().starts_with("events[0].event_type"), "{e}");
    }

    #[tokio::test]
    async fn paging_and_retention() {
        let (_d, t) = tel().await;
        let evs: Vec<EventIn> = (0..25).map(|i| ev(&format!("e{i}"), "x")).collect();
        t.ingest(&evs, None).await.unwrap();
        let (page1, c) = t
            .query(&Query {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        let (page2, _) = t
            .query(&Query {
                limit: 100,
                cursor: c,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page1.len() + page2.len(), 25);
        assert_eq!(t.enforce_retention(Utc::now()).await.unwrap(), 0);
        let later = Utc::now() + chrono::Duration::hours(t.cfg.retention_hours as i64 + 2);
        assert_eq!(t.enforce_retention(later).await.unwrap(), 25);
        // Dedup keys went with the events: the same id is accepted again.
        assert_eq!(t.ingest(&[ev("e1", "x")], None).await.unwrap(), (1, 0));
    }
}
