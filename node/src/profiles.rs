//! Player profiles: one automerge document per player (`prof/{player_id}`),
//! so cross-region replication adds automerge sync, not a rewrite. Fields:
//! `display_name`, `avatar` (strings) and `settings` (a JSON object stored as
//! a nested automerge map). Level, XP and stats are *not* here: they are
//! delta CRDTs in `meridian_replication::leaderboard` (high-rate counters do
//! not belong in a full-history document).

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use meridian_replication::{Batch, Storage, StoreError};
use serde_json::{Map, Value as Json};

/// Nesting depth of `settings`.
pub const SETTINGS_DEPTH_MAX: usize = 4;
/// Keys per object in `settings`.
pub const SETTINGS_KEYS_MAX: usize = 64;
pub const SETTINGS_KEY_MAX_BYTES: usize = 64;
/// Serialized automerge document size; a patch that would exceed it is refused
/// (history grows with every edit).
pub const PROFILE_DOC_MAX_BYTES: usize = 256 * 1024;
/// Per-player locks (striped) that serialize read-modify-write of one document.
const LOCK_STRIPES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("profile history is full ({PROFILE_DOC_MAX_BYTES} bytes)")]
    TooLarge,
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt profile document: {0}")]
    Corrupt(String),
}

/// A validated patch; `None` fields are left alone, `Some(None)` clears.
#[derive(Debug, Default, Clone)]
pub struct ProfilePatch {
    pub display_name: Option<Option<String>>,
    pub avatar: Option<Option<String>>,
    pub settings: Option<Map<String, Json>>,
}

#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct ProfileFields {
    pub display_name: Option<String>,
    pub avatar: Option<String>,
    pub settings: Json,
}

pub struct Profiles {
    storage: Storage,
    locks: Vec<tokio::sync::Mutex<()>>,
    display_name_max_chars: usize,
    avatar_max_bytes: usize,
    settings_max_bytes: usize,
}

fn key(player_id: &str) -> Vec<u8> {
    format!("prof/{player_id}").into_bytes()
}

impl Profiles {
    pub fn new(storage: Storage, cfg: &crate::config::ProfileConfig) -> Self {
        Self {
            storage,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            display_name_max_chars: cfg.display_name_max_chars,
            avatar_max_bytes: cfg.avatar_max_bytes,
            settings_max_bytes: cfg.settings_max_bytes,
        }
    }

    fn load(&self, player_id: &str) -> Result<AutoCommit, ProfileError> {
        match self.storage.get(&key(player_id))? {
            Some(bytes) => {
                AutoCommit::load(&bytes).map_err(|e| ProfileError::Corrupt(e.to_string()))
            }
            None => Ok(AutoCommit::new()),
        }
    }

    pub fn get(&self, player_id: &str) -> Result<ProfileFields, ProfileError> {
        Ok(read_fields(&self.load(player_id)?))
    }

    /// Check a patch against the limits; errors name the field.
    pub fn validate(&self, patch: &ProfilePatch) -> Result<(), ProfileError> {
        let inv = |field, message: String| ProfileError::Invalid { field, message };
        if let Some(Some(name)) = &patch.display_name {
            let n = name.chars().count();
            if n == 0 || n > self.display_name_max_chars {
                return Err(inv(
                    "display_name",
                    format!("must be 1-{} characters", self.display_name_max_chars),
                ));
            }
            if name.chars().any(char::is_control) || name.trim() != name {
                return Err(inv(
                    "display_name",
                    "no control characters or leading/trailing spaces".into(),
                ));
            }
        }
        if let Some(Some(avatar)) = &patch.avatar {
            if avatar.len() > self.avatar_max_bytes || avatar.chars().any(char::is_control) {
                return Err(inv(
                    "avatar",
                    format!(
                        "at most {} bytes, no control characters",
                        self.avatar_max_bytes
                    ),
                ));
            }
        }
        if let Some(settings) = &patch.settings {
            let size = serde_json::to_vec(settings)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > self.settings_max_bytes {
                return Err(inv(
                    "settings",
                    format!("at most {} bytes of JSON", self.settings_max_bytes),
                ));
            }
            check_json(settings, 1).map_err(|m| inv("settings", m))?;
        }
        Ok(())
    }

    /// Apply a patch as one automerge change and persist it durably.
    pub async fn patch(
        &self,
        player_id: &str,
        patch: &ProfilePatch,
    ) -> Result<ProfileFields, ProfileError> {
        self.validate(patch)?;
        let stripe = stripe(player_id);
        let _guard = self.locks[stripe].lock().await;
        let mut doc = self.load(player_id)?;
        let am = |e: automerge::AutomergeError| ProfileError::Corrupt(e.to_string());
        for (field, value) in [
            ("display_name", &patch.display_name),
            ("avatar", &patch.avatar),
        ] {
            match value {
                Some(Some(v)) => doc.put(ROOT, field, v.as_str()).map_err(am)?,
                Some(None) => doc.delete(ROOT, field).map_err(am)?,
                None => {}
            }
        }
        if let Some(settings) = &patch.settings {
            let obj = doc.put_object(ROOT, "settings", ObjType::Map).map_err(am)?;
            write_map(&mut doc, &obj, settings).map_err(am)?;
        }
        let bytes = doc.save();
        if bytes.len() > PROFILE_DOC_MAX_BYTES {
            return Err(ProfileError::TooLarge);
        }
        let mut b = Batch::new();
        b.put(key(player_id), bytes);
        self.storage.commit(&b).await?;
        Ok(read_fields(&doc))
    }
}

impl Profiles {
    /// Merge a replica's automerge document into the local one (under the
    /// player's lock, so a concurrent patch is never overwritten). Returns
    /// whether the local document changed. A document that does not load or
    /// is over [`PROFILE_DOC_MAX_BYTES`] is refused.
    pub async fn merge_remote(&self, player_id: &str, remote: &[u8]) -> Result<bool, ProfileError> {
        if remote.len() > PROFILE_DOC_MAX_BYTES {
            return Err(ProfileError::TooLarge);
        }
        let mut theirs =
            AutoCommit::load(remote).map_err(|e| ProfileError::Corrupt(e.to_string()))?;
        let _guard = self.locks[stripe(player_id)].lock().await;
        let mut doc = self.load(player_id)?;
        let before = doc.get_heads();
        doc.merge(&mut theirs)
            .map_err(|e| ProfileError::Corrupt(e.to_string()))?;
        if doc.get_heads() == before {
            return Ok(false);
        }
        let bytes = doc.save();
        if bytes.len() > PROFILE_DOC_MAX_BYTES {
            return Err(ProfileError::TooLarge);
        }
        let mut b = Batch::new();
        b.put(key(player_id), bytes);
        self.storage.commit(&b).await?;
        Ok(true)
    }
}

fn stripe(player_id: &str) -> usize {
    player_id
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % LOCK_STRIPES
}

fn check_json(map: &Map<String, Json>, depth: usize) -> Result<(), String> {
    if depth > SETTINGS_DEPTH_MAX {
        return Err(format!("nested deeper than {SETTINGS_DEPTH_MAX} levels"));
    }
    if map.len() > SETTINGS_KEYS_MAX {
        return Err(format!("more than {SETTINGS_KEYS_MAX} keys in one object"));
    }
    for (k, v) in map {
        if k.is_empty() || k.len() > SETTINGS_KEY_MAX_BYTES {
            return Err(format!(
                "key {k:?} must be 1-{SETTINGS_KEY_MAX_BYTES} bytes"
            ));
        }
        match v {
            Json::Object(m) => check_json(m, depth + 1)?,
            Json::Array(_) => return Err(format!("key {k:?}: arrays are not supported")),
            _ => {}
        }
    }
    Ok(())
}

fn write_map(
    doc: &mut AutoCommit,
    obj: &automerge::ObjId,
    map: &Map<String, Json>,
) -> Result<(), automerge::AutomergeError> {
    for (k, v) in map {
        match v {
            Json::Object(inner) => {
                let child = doc.put_object(obj, k.as_str(), ObjType::Map)?;
                write_map(doc, &child, inner)?;
            }
            Json::Null => doc.put(obj, k.as_str(), ScalarValue::Null)?,
            Json::Bool(b) => doc.put(obj, k.as_str(), *b)?,
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    doc.put(obj, k.as_str(), i)?
                } else if let Some(u) = n.as_u64() {
                    doc.put(obj, k.as_str(), u)?
                } else {
                    doc.put(obj, k.as_str(), n.as_f64().unwrap_or(0.0))?
                }
            }
            Json::String(s) => doc.put(obj, k.as_str(), s.as_str())?,
            Json::Array(_) => {} // refused by check_json
        }
    }
    Ok(())
}

fn read_map(doc: &AutoCommit, obj: &automerge::ObjId) -> Json {
    let mut out = Map::new();
    for k in doc.keys(obj) {
        if let Ok(Some((v, id))) = doc.get(obj, k.as_str()) {
            out.insert(k.clone(), read_value(doc, v, &id));
        }
    }
    Json::Object(out)
}

fn read_value(doc: &AutoCommit, v: Value<'_>, id: &automerge::ObjId) -> Json {
    match v {
        Value::Object(ObjType::Map) => read_map(doc, id),
        Value::Object(_) => Json::Null,
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(t) => Json::String(t.to_string()),
            ScalarValue::Int(i) => Json::from(*i),
            ScalarValue::Uint(u) => Json::from(*u),
            ScalarValue::F64(f) => {
                serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number)
            }
            ScalarValue::Boolean(b) => Json::Bool(*b),
            _ => Json::Null,
        },
    }
}

fn read_str(doc: &AutoCommit, field: &str) -> Option<String> {
    match doc.get(ROOT, field) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(t) => Some(t.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn read_fields(doc: &AutoCommit) -> ProfileFields {
    let settings = match doc.get(ROOT, "settings") {
        Ok(Some((Value::Object(ObjType::Map), id))) => read_map(doc, &id),
        _ => Json::Object(Map::new()),
    };
    ProfileFields {
        display_name: read_str(doc, "display_name"),
        avatar: read_str(doc, "avatar"),
        settings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn profiles() -> (tempfile::TempDir, Storage, Profiles) {
        let d = tempfile::tempdir().unwrap();
        let s = Storage::open_sled(d.path()).unwrap();
        let p = Profiles::new(s.clone(), &Default::default());
        (d, s, p)
    }

    #[tokio::test]
    async fn patch_persists_and_merges_fields() {
        let (_d, s, p) = profiles().await;
        let settings = serde_json::json!({"audio": {"volume": 7, "muted": false}, "lang": "en"});
        p.patch(
            "p1",
            &ProfilePatch {
                display_name: Some(Some("Ace".into())),
                settings: settings.as_object().cloned(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        p.patch(
            "p1",
            &ProfilePatch {
                avatar: Some(Some("https://x/a.png".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let again = Profiles::new(s, &Default::default());
        let f = again.get("p1").unwrap();
        assert_eq!(f.display_name.as_deref(), Some("Ace"));
        assert_eq!(f.avatar.as_deref(), Some("https://x/a.png"));
        assert_eq!(f.settings, settings);
    }

    #[tokio::test]
    async fn limits_name_the_field() {
        let (_d, _s, p) = profiles().await;
        let long = "x".repeat(33);
        let e = p
            .patch(
                "p",
                &ProfilePatch {
                    display_name: Some(Some(long)),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("display_name"), "{e}");
        assert!(p
            .validate(&ProfilePatch {
                display_name: Some(Some("x".repeat(32))),
                ..Default::default()
            })
            .is_ok());
        let deep = serde_json::json!({"a":{"b":{"c":{"d":{"e":1}}}}});
        let e = p
            .validate(&ProfilePatch {
                settings: deep.as_object().cloned(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().starts_with("settings"), "{e}");
    }
}
