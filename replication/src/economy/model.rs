//! The economy's data types: the error enum, the store catalog, wallets,
//! inventory items, transactions and the receipt every write returns.
//!
//! Everything here is plain data (serde) with validation; no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest accepted player id, in bytes.
pub const PLAYER_ID_BYTES_MAX: usize = 64;
/// Longest accepted currency or item id, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Longest accepted idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Longest accepted free-text reason of a grant, in bytes.
pub const REASON_BYTES_MAX: usize = 256;
/// Most items a catalog may define.
pub const CATALOG_ITEMS_MAX: usize = 10_000;
/// Suggested `Retry-After` for [`EconomyError::Unavailable`], in seconds.
pub const RETRY_AFTER_S: u64 = 1;

/// Every error of the economy. Business-rule errors are deterministic results
/// of the replicated state machine (and so are serializable); only
/// [`EconomyError::Unavailable`] is retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum EconomyError {
    /// The item id is not in the catalog (400/404).
    #[error("unknown item {0}")]
    UnknownItem(String),
    /// A quantity or amount is zero, negative, too large to compute, or more
    /// than is owned (400). Names the field.
    #[error("invalid quantity in field {field}")]
    InvalidQuantity { field: String },
    /// Some other input is malformed (400). Names the field.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: String, reason: String },
    /// The item has no price in the requested currency (400).
    #[error("item {item_id} has no price in {currency}")]
    CurrencyMismatch { item_id: String, currency: String },
    /// The wallet does not cover the debit (422).
    #[error("insufficient funds: need {needed} {currency}, have {available}")]
    InsufficientFunds {
        currency: String,
        needed: i64,
        available: i64,
    },
    /// A named limit would be exceeded, e.g. `max_per_purchase`,
    /// `stack_limit`, `purchase_limit`, `balance_max` (422).
    #[error("limit exceeded: {limit}")]
    LimitExceeded { limit: String },
    /// The idempotency key was used before with a different body (409).
    #[error("idempotency key reused with a different request body")]
    IdempotencyConflict,
    /// An inventory item, hold or player record does not exist (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The shard has no leader or quorum, or the commit timed out (503 with
    /// `Retry-After`). Retrying with the same idempotency key is safe.
    #[error("shard unavailable: {reason}")]
    Unavailable { reason: String },
    /// The storage layer failed (500).
    #[error("storage: {0}")]
    Storage(String),
    /// A directory name is held by someone else (409).
    #[error("name {name} is taken")]
    NameTaken { name: String },
}

impl EconomyError {
    /// True only for errors where the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EconomyError::Unavailable { .. })
    }

    /// A stable snake_case code for the API's JSON error.
    pub fn code(&self) -> &'static str {
        match self {
            EconomyError::UnknownItem(_) => "unknown_item",
            EconomyError::InvalidQuantity { .. } => "invalid_quantity",
            EconomyError::InvalidInput { .. } => "invalid_input",
            EconomyError::CurrencyMismatch { .. } => "currency_mismatch",
            EconomyError::InsufficientFunds { .. } => "insufficient_funds",
            EconomyError::LimitExceeded { .. } => "limit_exceeded",
            EconomyError::IdempotencyConflict => "idempotency_conflict",
            EconomyError::NotFound(_) => "not_found",
            EconomyError::Unavailable { .. } => "unavailable",
            EconomyError::Storage(_) => "storage_error",
            EconomyError::NameTaken { .. } => "name_taken",
        }
    }

    pub(crate) fn invalid(field: &str, reason: &str) -> Self {
        EconomyError::InvalidInput {
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn quantity(field: &str) -> Self {
        EconomyError::InvalidQuantity {
            field: field.to_string(),
        }
    }

    pub(crate) fn limit(limit: &str) -> Self {
        EconomyError::LimitExceeded {
            limit: limit.to_string(),
        }
    }

    pub(crate) fn unavailable(reason: impl std::fmt::Display) -> Self {
        EconomyError::Unavailable {
            reason: reason.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for EconomyError {
    fn from(e: crate::store::StoreError) -> Self {
        EconomyError::Storage(e.to_string())
    }
}

/// Player ids: 1..=64 bytes of `[A-Za-z0-9_.:-]` (UUIDs fit). They appear in
/// storage keys, so `/` is not allowed.
pub fn validate_player_id(field: &str, id: &str) -> Result<(), EconomyError> {
    validate_name(field, id, PLAYER_ID_BYTES_MAX)
}

/// Currency and item ids: same alphabet as player ids.
pub fn validate_name(field: &str, s: &str, max_bytes: usize) -> Result<(), EconomyError> {
    if s.is_empty() || s.len() > max_bytes {
        return Err(EconomyError::invalid(field, "length out of range"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(EconomyError::invalid(
            field,
            "allowed characters: A-Z a-z 0-9 _ - . :",
        ));
    }
    Ok(())
}

/// Idempotency keys: 1..=128 bytes of printable ASCII.
pub fn validate_idempotency_key(key: &str) -> Result<(), EconomyError> {
    validate_token("idempotency_key", key)
}

/// Opaque tokens (idempotency keys, payment references): 1..=128 bytes of
/// printable ASCII without spaces.
pub fn validate_token(field: &str, key: &str) -> Result<(), EconomyError> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(EconomyError::invalid(field, "length out of range"));
    }
    if !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(EconomyError::invalid(field, "printable ASCII only"));
    }
    Ok(())
}

/// One store item of the [`Catalog`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogItem {
    pub item_id: String,
    pub name: String,
    /// Price of one unit per currency. Empty: not for sale (grant only).
    #[serde(default)]
    pub prices: BTreeMap<String, i64>,
    /// Most units in one purchase.
    #[serde(default = "one")]
    pub max_per_purchase: u32,
    /// Most units a player may hold of this item (one stack per item).
    #[serde(default = "stack_default")]
    pub stack_limit: u64,
    /// Most units a player may ever buy; `None` = unlimited.
    #[serde(default)]
    pub purchase_limit_per_player: Option<u64>,
}

fn one() -> u32 {
    1
}

fn stack_default() -> u64 {
    1
}

/// The store catalog, defined in config:
///
/// ```toml
/// [[items]]
/// item_id = "sword_basic"
/// name = "Basic Sword"
/// prices = { coins = 100, gems = 2 }
/// max_per_purchase = 1
/// stack_limit = 1
/// purchase_limit_per_player = 1
///
/// [[items]]
/// item_id = "potion"
/// name = "Potion"
/// prices = { coins = 10 }
/// max_per_purchase = 20
/// stack_limit = 99
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub items: Vec<CatalogItem>,
}

impl Catalog {
    /// Check ids, prices and limits; call after deserializing.
    pub fn validate(&self) -> Result<(), EconomyError> {
        if self.items.len() > CATALOG_ITEMS_MAX {
            return Err(EconomyError::invalid("items", "too many catalog items"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for item in &self.items {
            validate_name("item_id", &item.item_id, NAME_BYTES_MAX)?;
            if !seen.insert(item.item_id.as_str()) {
                return Err(EconomyError::invalid("item_id", "duplicate item id"));
            }
            for (currency, price) in &item.prices {
                validate_name("currency", currency, NAME_BYTES_MAX)?;
                if *price <= 0 {
                    return Err(EconomyError::quantity("prices"));
                }
            }
            if item.max_per_purchase == 0 {
                return Err(EconomyError::quantity("max_per_purchase"));
            }
            if item.stack_limit == 0 || item.stack_limit > i64::MAX as u64 {
                return Err(EconomyError::quantity("stack_limit"));
            }
            if item.purchase_limit_per_player == Some(0) {
                return Err(EconomyError::quantity("purchase_limit_per_player"));
            }
        }
        Ok(())
    }

    pub fn get(&self, item_id: &str) -> Option<&CatalogItem> {
        self.items.iter().find(|i| i.item_id == item_id)
    }
}

/// One stack in a player's inventory (one stack per item template).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryItem {
    /// Instance id (stable for the life of the stack).
    pub id: String,
    pub item_template_id: String,
    pub quantity: u64,
    pub acquired_date: DateTime<Utc>,
    pub is_equipped: bool,
}

/// What a [`Transaction`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    Purchase,
    Grant,
    Consume,
    TransferOut,
    TransferIn,
}

/// State of a [`Transaction`]. `Pending` only for a cross-shard transfer
/// between its prepare and its commit/abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxStatus {
    Pending,
    Completed,
    Failed,
}

/// The seed's Transaction entity, one per player-visible money/item movement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub player_id: String,
    pub kind: TxKind,
    pub item_id: Option<String>,
    /// Units of `item_id` moved (positive in, negative out), 0 if none.
    pub item_quantity: i64,
    pub currency_type: Option<String>,
    /// Signed: negative = debit, positive = credit.
    pub amount: i64,
    pub status: TxStatus,
    pub timestamp: DateTime<Utc>,
    pub payment_gateway_ref: Option<String>,
    /// The other player of a transfer.
    pub counterparty: Option<String>,
    /// Free text of a grant (match reward, support).
    pub reason: Option<String>,
}

/// The result of every write: what the API returns as
/// `{transaction_id, status, balances, items}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Empty for writes without a transaction (equip).
    pub transaction_id: String,
    pub status: TxStatus,
    /// The acting player's whole wallet after the write.
    pub balances: BTreeMap<String, i64>,
    /// The inventory stacks this write touched, after the write.
    pub items: Vec<InventoryItem>,
    /// True when this is the stored first result of an idempotent retry.
    #[serde(default)]
    pub replayed: bool,
}

pub(crate) fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_parses_and_rejects_unknown_fields() {
        let json = r#"{"items":[{"item_id":"potion","name":"Potion","prices":{"coins":10},
            "max_per_purchase":5,"stack_limit":99}]}"#;
        let c: Catalog = serde_json::from_str(json).unwrap();
        c.validate().unwrap();
        assert_eq!(c.get("potion").unwrap().prices["coins"], 10);
        let bad = r#"{"items":[{"item_id":"x","name":"X","price":3}]}"#;
        assert!(serde_json::from_str::<Catalog>(bad).is_err());
    }

    #[test]
    fn catalog_validation_edges() {
        let mut c = Catalog {
            items: vec![CatalogItem {
                item_id: "a".into(),
                name: "A".into(),
                prices: [("coins".to_string(), 0)].into(),
                max_per_purchase: 1,
                stack_limit: 1,
                purchase_limit_per_player: None,
            }],
        };
        assert!(c.validate().is_err());
        c.items[0].prices.insert("coins".into(), 1);
        c.validate().unwrap();
        c.items.push(c.items[0].clone());
        assert!(c.validate().is_err());
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_player_id("player_id", "p-1").is_ok());
        assert!(validate_player_id("player_id", "a/b").is_err());
        assert!(validate_player_id("player_id", "").is_err());
        assert!(validate_player_id("player_id", &"x".repeat(PLAYER_ID_BYTES_MAX + 1)).is_err());
        assert!(validate_idempotency_key(&"k".repeat(IDEMPOTENCY_KEY_BYTES_MAX)).is_ok());
        assert!(validate_idempotency_key(&"k".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1)).is_err());
        assert!(validate_idempotency_key("a b").is_err());
        assert!(!EconomyError::IdempotencyConflict.is_retryable());
        assert!(EconomyError::unavailable("x").is_retryable());
    }
}
