//! The economy state machine of one shard: pure, deterministic, no I/O.
//!
//! [`ShardState::apply`] takes one replicated [`Request`] and returns its
//! result plus the list of records it changed ([`Write`]); the Raft layer
//! turns those into one atomic storage batch together with the applied log
//! id. Every input that could differ between replicas (time, prices, ids) is
//! inside the request, fixed by the proposer, so every replica computes the
//! same state.
//!
//! Invariants asserted here: no balance is ever negative; a failed command
//! changes nothing except bounded retention evictions.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{
    ts, validate_player_id, EconomyError, InventoryItem, Receipt, Transaction, TxKind, TxStatus,
};

/// Idempotency records live at least this long (24 h), in milliseconds.
pub const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// Most idempotency records kept per player; the oldest is evicted first.
pub const IDEMPOTENCY_KEYS_PER_PLAYER_MAX: usize = 1_000;
/// Most expired records (idempotency + credit) evicted by one apply, so an
/// apply stays O(1) amortized.
pub const EVICTIONS_PER_APPLY_MAX: usize = 64;
/// Cross-shard credit records are kept this long (7 days), in milliseconds.
/// A hold unresolved for longer than this would be re-credited: the
/// coordinator resolves holds within seconds, so this is a wide margin.
pub const CREDIT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Most open cross-shard holds per shard.
pub const HOLDS_PER_SHARD_MAX: usize = 10_000;
/// Most inventory stacks per player.
pub const INVENTORY_STACKS_PER_PLAYER_MAX: usize = 1_000;

/// The body identity of an idempotent request: its key and a SHA-256 of the
/// request's client-visible fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemTag {
    pub key: String,
    pub body_hash: [u8; 32],
}

/// SHA-256 over the postcard encoding of `body` (the request fields a client
/// sent, plus the operation name).
pub fn body_hash(body: &impl Serialize) -> [u8; 32] {
    let bytes = postcard::to_allocvec(body).unwrap_or_default();
    Sha256::digest(&bytes).into()
}

/// One replicated log entry's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The proposer's clock, in ms since the epoch; the shard clock is the
    /// max of all seen, so it never runs backwards.
    pub ts_ms: i64,
    pub cmd: Command,
}

/// The commands of the state machine. Catalog data (price, limits) is
/// resolved by the proposer and carried here, so a config change never
/// makes replicas diverge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Purchase {
        player: String,
        item_id: String,
        quantity: u64,
        currency: String,
        price_each: i64,
        max_per_purchase: u32,
        stack_limit: u64,
        purchase_limit: Option<u64>,
        tx_id: String,
        item_instance_id: String,
        idem: IdemTag,
    },
    Grant {
        player: String,
        /// `(currency, amount > 0)`
        currency: Option<(String, i64)>,
        /// `(item_id, quantity > 0, stack_limit)`
        item: Option<(String, u64, u64)>,
        reason: String,
        payment_gateway_ref: Option<String>,
        tx_id: String,
        item_instance_id: String,
        idem: IdemTag,
    },
    Consume {
        player: String,
        item_instance_id: String,
        quantity: u64,
        tx_id: String,
        idem: IdemTag,
    },
    Equip {
        player: String,
        item_instance_id: String,
        equipped: bool,
    },
    /// Player to player inside one shard, in one step.
    Transfer {
        from: String,
        to: String,
        currency: String,
        amount: i64,
        tx_id: String,
        idem: IdemTag,
    },
    /// Cross-shard phase 1, on the sender's shard: debit and hold.
    TransferPrepare {
        transfer_id: String,
        from: String,
        to: String,
        to_shard: u16,
        currency: String,
        amount: i64,
        idem: IdemTag,
    },
    /// Cross-shard phase 2, on the receiver's shard: credit once per
    /// transfer id; the decision (credited or rejected) is recorded and
    /// replayed on a retry.
    TransferCredit {
        transfer_id: String,
        from: String,
        to: String,
        currency: String,
        amount: i64,
    },
    /// Cross-shard phase 3 after a credit, on the sender's shard: drop the
    /// hold. A no-op if the hold is gone.
    TransferCommit { transfer_id: String },
    /// Cross-shard phase 3 after a rejected credit: refund and drop the hold.
    /// A no-op if the hold is gone.
    TransferAbort { transfer_id: String },
    /// Directory: claim a globally unique name (normalized username or
    /// email) for `owner`. Claiming one's own name again succeeds.
    ClaimName { name: String, owner: String },
    /// Directory: release a name held by `owner` (erasure, failed sign-up).
    ReleaseName { name: String, owner: String },
}

/// One player's record: wallet, inventory and purchase counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerState {
    pub wallet: BTreeMap<String, i64>,
    /// Keyed by instance id.
    pub items: BTreeMap<String, InventoryItem>,
    /// Units bought per item id, for the per-player purchase limit.
    pub purchased: BTreeMap<String, u64>,
}

/// A stored first result of an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    pub player: String,
    pub key: String,
    pub body_hash: [u8; 32],
    pub receipt: Receipt,
    pub at_ms: i64,
    /// The request's business-rule refusal (then `receipt` is empty): a
    /// retry with the same key and body gets the same refusal, so a request
    /// a client saw refused can never apply later (a delayed copy included).
    pub error: Option<EconomyError>,
}

/// An open cross-shard transfer on the sender's shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub transfer_id: String,
    pub from: String,
    pub to: String,
    pub to_shard: u16,
    pub currency: String,
    pub amount: i64,
    /// The sender's pending transaction and its sequence number.
    pub tx: Transaction,
    pub tx_seq: u64,
    pub created_ms: i64,
    /// The sender's idempotency key: its stored receipt gets the final
    /// status when the hold is resolved.
    pub idem_key: String,
}

/// The receiver shard's decision for one transfer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditRecord {
    pub transfer_id: String,
    pub result: Result<(), EconomyError>,
    pub at_ms: i64,
}

/// A grant made for a real-money payment, keyed by the gateway's reference:
/// such a grant happens once per reference, whatever the idempotency key
/// and however late a webhook is redelivered. Kept for as long as the
/// transaction log (it grows only with real-money purchases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub reference: String,
    pub player: String,
    pub receipt: Receipt,
}

/// Counters of the shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub next_tx_seq: u64,
    pub clock_ms: i64,
}

/// A record changed by an apply; the Raft layer persists its current value
/// (or deletes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Player(String),
    IdemPut { player: String, key: String },
    IdemDel { player: String, key: String },
    Tx { seq: u64, tx: Transaction },
    HoldPut(String),
    HoldDel(String),
    CreditPut(String),
    CreditDel(String),
    PaymentPut(String),
    Name(String),
}

/// The result of one apply.
#[derive(Debug)]
pub struct Applied {
    pub result: Result<Receipt, EconomyError>,
    pub writes: Vec<Write>,
}

/// The in-memory state of one shard (transactions live only in storage).
#[derive(Debug, Clone, Default)]
pub struct ShardState {
    players: BTreeMap<String, PlayerState>,
    idem: BTreeMap<String, BTreeMap<String, IdemRecord>>,
    idem_by_time: BTreeSet<(i64, String, String)>,
    holds: BTreeMap<String, Hold>,
    credits: BTreeMap<String, CreditRecord>,
    credits_by_time: BTreeSet<(i64, String)>,
    payments: BTreeMap<String, PaymentRecord>,
    /// The name directory part of this shard: name -> owner.
    names: BTreeMap<String, String>,
    meta: ShardMeta,
}

fn debit(
    wallet: &mut BTreeMap<String, i64>,
    currency: &str,
    amount: i64,
) -> Result<(), EconomyError> {
    let available = wallet.get(currency).copied().unwrap_or(0);
    if available < amount {
        return Err(EconomyError::InsufficientFunds {
            currency: currency.to_string(),
            needed: amount,
            available,
        });
    }
    let left = available - amount;
    assert!(left >= 0, "balance would go negative");
    wallet.insert(currency.to_string(), left);
    Ok(())
}

fn credit(
    wallet: &mut BTreeMap<String, i64>,
    currency: &str,
    amount: i64,
) -> Result<(), EconomyError> {
    let have = wallet.get(currency).copied().unwrap_or(0);
    let new = have
        .checked_add(amount)
        .ok_or_else(|| EconomyError::limit("balance_max"))?;
    assert!(new >= 0, "balance would go negative");
    wallet.insert(currency.to_string(), new);
    Ok(())
}

/// Add `quantity` of `item_id` to the player's single stack of it.
fn add_items(
    p: &mut PlayerState,
    item_id: &str,
    quantity: u64,
    stack_limit: u64,
    instance_id: &str,
    now_ms: i64,
) -> Result<InventoryItem, EconomyError> {
    let existing = p.items.values_mut().find(|i| i.item_template_id == item_id);
    match existing {
        Some(stack) => {
            let total = stack
                .quantity
                .checked_add(quantity)
                .filter(|t| *t <= stack_limit)
                .ok_or_else(|| EconomyError::limit("stack_limit"))?;
            stack.quantity = total;
            Ok(stack.clone())
        }
        None => {
            if quantity > stack_limit {
                return Err(EconomyError::limit("stack_limit"));
            }
            if p.items.len() >= INVENTORY_STACKS_PER_PLAYER_MAX {
                return Err(EconomyError::limit("inventory_stacks_per_player_max"));
            }
            if p.items.contains_key(instance_id) {
                return Err(EconomyError::invalid("item_instance_id", "duplicate"));
            }
            let item = InventoryItem {
                id: instance_id.to_string(),
                item_template_id: item_id.to_string(),
                quantity,
                acquired_date: ts(now_ms),
                is_equipped: false,
            };
            p.items.insert(instance_id.to_string(), item.clone());
            Ok(item)
        }
    }
}

fn positive_amount(field: &str, amount: i64) -> Result<(), EconomyError> {
    if amount <= 0 {
        return Err(EconomyError::quantity(field));
    }
    Ok(())
}

impl ShardState {
    pub fn new() -> Self {
        Self::default()
    }

    // --- loading (from storage, on open or snapshot install) ---

    pub fn load_player(&mut self, id: String, p: PlayerState) {
        self.players.insert(id, p);
    }
    pub fn load_idem(&mut self, rec: IdemRecord) {
        self.idem_by_time
            .insert((rec.at_ms, rec.player.clone(), rec.key.clone()));
        self.idem
            .entry(rec.player.clone())
            .or_default()
            .insert(rec.key.clone(), rec);
    }
    pub fn load_hold(&mut self, h: Hold) {
        self.holds.insert(h.transfer_id.clone(), h);
    }
    pub fn load_credit(&mut self, c: CreditRecord) {
        self.credits_by_time
            .insert((c.at_ms, c.transfer_id.clone()));
        self.credits.insert(c.transfer_id.clone(), c);
    }
    pub fn load_payment(&mut self, p: PaymentRecord) {
        self.payments.insert(p.reference.clone(), p);
    }
    pub fn load_name(&mut self, name: String, owner: String) {
        self.names.insert(name, owner);
    }
    /// The owner of a directory name on this shard.
    pub fn name_owner(&self, name: &str) -> Option<&str> {
        self.names.get(name).map(String::as_str)
    }
    pub fn load_meta(&mut self, m: ShardMeta) {
        self.meta = m;
    }

    // --- reads ---

    pub fn player(&self, id: &str) -> Option<&PlayerState> {
        self.players.get(id)
    }
    pub fn players(&self) -> impl Iterator<Item = (&String, &PlayerState)> {
        self.players.iter()
    }
    pub fn idem_record(&self, player: &str, key: &str) -> Option<&IdemRecord> {
        self.idem.get(player).and_then(|m| m.get(key))
    }
    pub fn idem_count(&self) -> usize {
        self.idem_by_time.len()
    }
    pub fn hold(&self, transfer_id: &str) -> Option<&Hold> {
        self.holds.get(transfer_id)
    }
    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }
    pub fn credit_record(&self, transfer_id: &str) -> Option<&CreditRecord> {
        self.credits.get(transfer_id)
    }
    pub fn payment_record(&self, reference: &str) -> Option<&PaymentRecord> {
        self.payments.get(reference)
    }
    pub fn meta(&self) -> ShardMeta {
        self.meta
    }
    /// Sum of every wallet's balance in `currency`.
    pub fn balance_total(&self, currency: &str) -> i128 {
        self.players
            .values()
            .map(|p| p.wallet.get(currency).copied().unwrap_or(0) as i128)
            .sum()
    }

    // --- apply ---

    /// Apply one request. Deterministic: the same state and request give
    /// the same result and writes on every replica.
    pub fn apply(&mut self, req: &Request) -> Applied {
        self.meta.clock_ms = self.meta.clock_ms.max(req.ts_ms);
        let mut writes = Vec::new();
        self.evict_expired(&mut writes);
        let result = self.exec(&req.cmd, &mut writes);
        Applied { result, writes }
    }

    fn now(&self) -> i64 {
        self.meta.clock_ms
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.meta.next_tx_seq;
        self.meta.next_tx_seq += 1;
        s
    }

    /// Store `player`'s new state and one completed transaction; the receipt
    /// shows the wallet after it and the stacks it touched.
    fn complete(
        &mut self,
        w: &mut Vec<Write>,
        player: &str,
        p: PlayerState,
        tx: Transaction,
        items: Vec<InventoryItem>,
    ) -> Receipt {
        let receipt = Receipt {
            transaction_id: tx.id.clone(),
            status: TxStatus::Completed,
            balances: p.wallet.clone(),
            items,
            replayed: false,
        };
        let seq = self.next_seq();
        self.players.insert(player.to_string(), p);
        w.push(Write::Player(player.to_string()));
        w.push(Write::Tx { seq, tx });
        receipt
    }

    fn evict_expired(&mut self, w: &mut Vec<Write>) {
        let idem_cut = self.now().saturating_sub(IDEMPOTENCY_RETENTION_MS);
        let credit_cut = self.now().saturating_sub(CREDIT_RETENTION_MS);
        for _ in 0..EVICTIONS_PER_APPLY_MAX {
            let Some(first) = self.idem_by_time.first().cloned() else {
                break;
            };
            if first.0 >= idem_cut {
                break;
            }
            self.remove_idem(&first.1, &first.2, w);
        }
        for _ in 0..EVICTIONS_PER_APPLY_MAX {
            let Some(first) = self.credits_by_time.first().cloned() else {
                break;
            };
            if first.0 >= credit_cut {
                break;
            }
            self.credits_by_time.remove(&first);
            self.credits.remove(&first.1);
            w.push(Write::CreditDel(first.1));
        }
    }

    fn remove_idem(&mut self, player: &str, key: &str, w: &mut Vec<Write>) {
        if let Some(m) = self.idem.get_mut(player) {
            if let Some(rec) = m.remove(key) {
                self.idem_by_time
                    .remove(&(rec.at_ms, rec.player.clone(), rec.key.clone()));
                w.push(Write::IdemDel {
                    player: player.to_string(),
                    key: key.to_string(),
                });
            }
            if m.is_empty() {
                self.idem.remove(player);
            }
        }
    }

    fn remember(
        &mut self,
        player: &str,
        idem: &IdemTag,
        result: &Result<Receipt, EconomyError>,
        w: &mut Vec<Write>,
    ) {
        let full = self
            .idem
            .get(player)
            .is_some_and(|m| m.len() >= IDEMPOTENCY_KEYS_PER_PLAYER_MAX);
        if full {
            let oldest = self.idem.get(player).and_then(|m| {
                m.values()
                    .min_by_key(|r| (r.at_ms, r.key.clone()))
                    .map(|r| r.key.clone())
            });
            if let Some(k) = oldest {
                self.remove_idem(player, &k, w);
            }
        }
        let rec = IdemRecord {
            player: player.to_string(),
            key: idem.key.clone(),
            body_hash: idem.body_hash,
            receipt: result.clone().unwrap_or_else(|_| Receipt {
                transaction_id: String::new(),
                status: TxStatus::Failed,
                balances: BTreeMap::new(),
                items: Vec::new(),
                replayed: false,
            }),
            at_ms: self.now(),
            error: result.as_ref().err().cloned(),
        };
        self.load_idem(rec);
        w.push(Write::IdemPut {
            player: player.to_string(),
            key: idem.key.clone(),
        });
    }

    /// Runs `f` unless `(player, key)` was seen: then the stored outcome (same
    /// body) or a conflict (other body). Refusals are remembered too: a
    /// request refused by a business rule stays refused under its key (a
    /// client that wants to try again after a top-up uses a new key).
    fn idempotent(
        &mut self,
        player: &str,
        idem: &IdemTag,
        w: &mut Vec<Write>,
        f: impl FnOnce(&mut Self, &mut Vec<Write>) -> Result<Receipt, EconomyError>,
    ) -> Result<Receipt, EconomyError> {
        if let Some(rec) = self.idem_record(player, &idem.key) {
            if rec.body_hash != idem.body_hash {
                return Err(EconomyError::IdempotencyConflict);
            }
            if let Some(e) = &rec.error {
                return Err(e.clone());
            }
            let mut r = rec.receipt.clone();
            r.replayed = true;
            return Ok(r);
        }
        let result = f(self, w);
        self.remember(player, idem, &result, w);
        result
    }

    fn tx(&self, id: &str, player: &str, kind: TxKind, status: TxStatus) -> Transaction {
        Transaction {
            id: id.to_string(),
            player_id: player.to_string(),
            kind,
            item_id: None,
            item_quantity: 0,
            currency_type: None,
            amount: 0,
            status,
            timestamp: ts(self.now()),
            payment_gateway_ref: None,
            counterparty: None,
            reason: None,
        }
    }

    fn exec(&mut self, cmd: &Command, w: &mut Vec<Write>) -> Result<Receipt, EconomyError> {
        match cmd {
            Command::Purchase {
                player,
                item_id,
                quantity,
                currency,
                price_each,
                max_per_purchase,
                stack_limit,
                purchase_limit,
                tx_id,
                item_instance_id,
                idem,
            } => {
                validate_player_id("player_id", player)?;
                self.idempotent(player, idem, w, |s, w| {
                    let q = *quantity;
                    if q == 0 || q > i64::MAX as u64 {
                        return Err(EconomyError::quantity("quantity"));
                    }
                    if q > u64::from(*max_per_purchase) {
                        return Err(EconomyError::limit("max_per_purchase"));
                    }
                    positive_amount("price", *price_each)?;
                    let cost = price_each
                        .checked_mul(q as i64)
                        .ok_or_else(|| EconomyError::quantity("quantity"))?;
                    let mut p = s.players.get(player).cloned().unwrap_or_default();
                    let bought = p.purchased.get(item_id).copied().unwrap_or(0);
                    if let Some(limit) = purchase_limit {
                        if bought.saturating_add(q) > *limit {
                            return Err(EconomyError::limit("purchase_limit"));
                        }
                    }
                    let item =
                        add_items(&mut p, item_id, q, *stack_limit, item_instance_id, s.now())?;
                    debit(&mut p.wallet, currency, cost)?;
                    p.purchased
                        .insert(item_id.clone(), bought.saturating_add(q));
                    let mut tx = s.tx(tx_id, player, TxKind::Purchase, TxStatus::Completed);
                    tx.item_id = Some(item_id.clone());
                    tx.item_quantity = q as i64;
                    tx.currency_type = Some(currency.clone());
                    tx.amount = -cost;
                    Ok(s.complete(w, player, p, tx, vec![item]))
                })
            }
            Command::Grant {
                player,
                currency,
                item,
                reason,
                payment_gateway_ref,
                tx_id,
                item_instance_id,
                idem,
            } => {
                validate_player_id("player_id", player)?;
                if let Some(rec) = payment_gateway_ref
                    .as_ref()
                    .and_then(|r| self.payments.get(r))
                {
                    if rec.player != *player {
                        return Err(EconomyError::invalid(
                            "payment_gateway_ref",
                            "belongs to another player",
                        ));
                    }
                    let mut r = rec.receipt.clone();
                    r.replayed = true;
                    return Ok(r);
                }
                let receipt = self.idempotent(player, idem, w, |s, w| {
                    if currency.is_none() && item.is_none() {
                        return Err(EconomyError::invalid(
                            "amount",
                            "grant needs a currency amount or an item",
                        ));
                    }
                    let mut p = s.players.get(player).cloned().unwrap_or_default();
                    let mut tx = s.tx(tx_id, player, TxKind::Grant, TxStatus::Completed);
                    let mut items = Vec::new();
                    if let Some((c, amount)) = currency {
                        positive_amount("amount", *amount)?;
                        credit(&mut p.wallet, c, *amount)?;
                        tx.currency_type = Some(c.clone());
                        tx.amount = *amount;
                    }
                    if let Some((item_id, q, stack_limit)) = item {
                        if *q == 0 || *q > i64::MAX as u64 {
                            return Err(EconomyError::quantity("quantity"));
                        }
                        items.push(add_items(
                            &mut p,
                            item_id,
                            *q,
                            *stack_limit,
                            item_instance_id,
                            s.now(),
                        )?);
                        tx.item_id = Some(item_id.clone());
                        tx.item_quantity = *q as i64;
                    }
                    tx.reason = Some(reason.clone());
                    tx.payment_gateway_ref = payment_gateway_ref.clone();
                    Ok(s.complete(w, player, p, tx, items))
                })?;
                if let Some(r) = payment_gateway_ref {
                    if !receipt.replayed {
                        self.load_payment(PaymentRecord {
                            reference: r.clone(),
                            player: player.clone(),
                            receipt: receipt.clone(),
                        });
                        w.push(Write::PaymentPut(r.clone()));
                    }
                }
                Ok(receipt)
            }
            Command::Consume {
                player,
                item_instance_id,
                quantity,
                tx_id,
                idem,
            } => {
                validate_player_id("player_id", player)?;
                self.idempotent(player, idem, w, |s, w| {
                    let mut p = s.players.get(player).cloned().ok_or_else(|| {
                        EconomyError::NotFound(format!("item {item_instance_id}"))
                    })?;
                    let stack = p.items.get_mut(item_instance_id).ok_or_else(|| {
                        EconomyError::NotFound(format!("item {item_instance_id}"))
                    })?;
                    if *quantity == 0 || *quantity > stack.quantity {
                        return Err(EconomyError::quantity("quantity"));
                    }
                    stack.quantity -= quantity;
                    let after = stack.clone();
                    if after.quantity == 0 {
                        p.items.remove(item_instance_id);
                    }
                    let mut tx = s.tx(tx_id, player, TxKind::Consume, TxStatus::Completed);
                    tx.item_id = Some(after.item_template_id.clone());
                    tx.item_quantity = -(*quantity as i64);
                    Ok(s.complete(w, player, p, tx, vec![after]))
                })
            }
            Command::Equip {
                player,
                item_instance_id,
                equipped,
            } => {
                validate_player_id("player_id", player)?;
                let not_found = || EconomyError::NotFound(format!("item {item_instance_id}"));
                let p = self.players.get_mut(player).ok_or_else(not_found)?;
                let item = p.items.get_mut(item_instance_id).ok_or_else(not_found)?;
                item.is_equipped = *equipped;
                let receipt = Receipt {
                    transaction_id: String::new(),
                    status: TxStatus::Completed,
                    balances: p.wallet.clone(),
                    items: vec![item.clone()],
                    replayed: false,
                };
                w.push(Write::Player(player.clone()));
                Ok(receipt)
            }
            Command::Transfer {
                from,
                to,
                currency,
                amount,
                tx_id,
                idem,
            } => {
                validate_player_id("from", from)?;
                validate_player_id("to", to)?;
                if from == to {
                    return Err(EconomyError::invalid("to", "cannot transfer to yourself"));
                }
                self.idempotent(from, idem, w, |s, w| {
                    positive_amount("amount", *amount)?;
                    let mut pf = s.players.get(from).cloned().unwrap_or_default();
                    let mut pt = s.players.get(to).cloned().unwrap_or_default();
                    debit(&mut pf.wallet, currency, *amount)?;
                    credit(&mut pt.wallet, currency, *amount)?;
                    let mut out = s.tx(tx_id, from, TxKind::TransferOut, TxStatus::Completed);
                    out.currency_type = Some(currency.clone());
                    out.amount = -amount;
                    out.counterparty = Some(to.clone());
                    let mut inn = s.tx(
                        &format!("{tx_id}-in"),
                        to,
                        TxKind::TransferIn,
                        TxStatus::Completed,
                    );
                    inn.currency_type = Some(currency.clone());
                    inn.amount = *amount;
                    inn.counterparty = Some(from.clone());
                    let receipt = Receipt {
                        transaction_id: tx_id.clone(),
                        status: TxStatus::Completed,
                        balances: pf.wallet.clone(),
                        items: Vec::new(),
                        replayed: false,
                    };
                    let (s1, s2) = (s.next_seq(), s.next_seq());
                    s.players.insert(from.clone(), pf);
                    s.players.insert(to.clone(), pt);
                    w.push(Write::Player(from.clone()));
                    w.push(Write::Player(to.clone()));
                    w.push(Write::Tx { seq: s1, tx: out });
                    w.push(Write::Tx { seq: s2, tx: inn });
                    Ok(receipt)
                })
            }
            Command::TransferPrepare {
                transfer_id,
                from,
                to,
                to_shard,
                currency,
                amount,
                idem,
            } => {
                validate_player_id("from", from)?;
                validate_player_id("to", to)?;
                if from == to {
                    return Err(EconomyError::invalid("to", "cannot transfer to yourself"));
                }
                self.idempotent(from, idem, w, |s, w| {
                    positive_amount("amount", *amount)?;
                    if s.holds.contains_key(transfer_id) {
                        return Err(EconomyError::invalid("transfer_id", "duplicate"));
                    }
                    if s.holds.len() >= HOLDS_PER_SHARD_MAX {
                        return Err(EconomyError::limit("holds_per_shard_max"));
                    }
                    let mut pf = s.players.get(from).cloned().unwrap_or_default();
                    debit(&mut pf.wallet, currency, *amount)?;
                    let mut tx = s.tx(transfer_id, from, TxKind::TransferOut, TxStatus::Pending);
                    tx.currency_type = Some(currency.clone());
                    tx.amount = -amount;
                    tx.counterparty = Some(to.clone());
                    let seq = s.next_seq();
                    let hold = Hold {
                        transfer_id: transfer_id.clone(),
                        from: from.clone(),
                        to: to.clone(),
                        to_shard: *to_shard,
                        currency: currency.clone(),
                        amount: *amount,
                        tx: tx.clone(),
                        tx_seq: seq,
                        created_ms: s.now(),
                        idem_key: idem.key.clone(),
                    };
                    let receipt = Receipt {
                        transaction_id: transfer_id.clone(),
                        status: TxStatus::Pending,
                        balances: pf.wallet.clone(),
                        items: Vec::new(),
                        replayed: false,
                    };
                    s.players.insert(from.clone(), pf);
                    s.holds.insert(transfer_id.clone(), hold);
                    w.push(Write::Player(from.clone()));
                    w.push(Write::HoldPut(transfer_id.clone()));
                    w.push(Write::Tx { seq, tx });
                    Ok(receipt)
                })
            }
            Command::TransferCredit {
                transfer_id,
                from,
                to,
                currency,
                amount,
            } => {
                if let Some(rec) = self.credits.get(transfer_id) {
                    let mut r = self.credit_receipt(transfer_id, to, rec.result.clone())?;
                    r.replayed = true;
                    return Ok(r);
                }
                let result = (|| {
                    validate_player_id("to", to)?;
                    positive_amount("amount", *amount)?;
                    let mut pt = self.players.get(to).cloned().unwrap_or_default();
                    credit(&mut pt.wallet, currency, *amount)?;
                    Ok(pt)
                })();
                let decision = match result {
                    Ok(pt) => {
                        let mut tx = self.tx(
                            &format!("{transfer_id}-in"),
                            to,
                            TxKind::TransferIn,
                            TxStatus::Completed,
                        );
                        tx.currency_type = Some(currency.clone());
                        tx.amount = *amount;
                        tx.counterparty = Some(from.clone());
                        let seq = self.next_seq();
                        self.players.insert(to.clone(), pt);
                        w.push(Write::Player(to.clone()));
                        w.push(Write::Tx { seq, tx });
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                self.load_credit(CreditRecord {
                    transfer_id: transfer_id.clone(),
                    result: decision.clone(),
                    at_ms: self.now(),
                });
                w.push(Write::CreditPut(transfer_id.clone()));
                self.credit_receipt(transfer_id, to, decision)
            }
            Command::TransferCommit { transfer_id } => self.finish_hold(transfer_id, true, w),
            Command::TransferAbort { transfer_id } => self.finish_hold(transfer_id, false, w),
            Command::ClaimName { name, owner } => {
                let replayed = match self.names.get(name) {
                    Some(o) if o == owner => true,
                    Some(_) => return Err(EconomyError::NameTaken { name: name.clone() }),
                    None => {
                        self.names.insert(name.clone(), owner.clone());
                        w.push(Write::Name(name.clone()));
                        false
                    }
                };
                Ok(Receipt {
                    transaction_id: String::new(),
                    status: TxStatus::Completed,
                    balances: BTreeMap::new(),
                    items: Vec::new(),
                    replayed,
                })
            }
            Command::ReleaseName { name, owner } => {
                let held = self.names.get(name).is_some_and(|o| o == owner);
                if held {
                    self.names.remove(name);
                    w.push(Write::Name(name.clone()));
                }
                Ok(Receipt {
                    transaction_id: String::new(),
                    status: TxStatus::Completed,
                    balances: BTreeMap::new(),
                    items: Vec::new(),
                    replayed: !held,
                })
            }
        }
    }

    fn credit_receipt(
        &self,
        transfer_id: &str,
        to: &str,
        result: Result<(), EconomyError>,
    ) -> Result<Receipt, EconomyError> {
        result?;
        Ok(Receipt {
            transaction_id: format!("{transfer_id}-in"),
            status: TxStatus::Completed,
            balances: self
                .players
                .get(to)
                .map(|p| p.wallet.clone())
                .unwrap_or_default(),
            items: Vec::new(),
            replayed: false,
        })
    }

    fn finish_hold(
        &mut self,
        transfer_id: &str,
        commit: bool,
        w: &mut Vec<Write>,
    ) -> Result<Receipt, EconomyError> {
        let Some(hold) = self.holds.get(transfer_id).cloned() else {
            // Already resolved (a retried phase 3): nothing to do.
            return Ok(Receipt {
                transaction_id: transfer_id.to_string(),
                status: TxStatus::Completed,
                balances: BTreeMap::new(),
                items: Vec::new(),
                replayed: true,
            });
        };
        let mut pf = self.players.get(&hold.from).cloned().unwrap_or_default();
        let status = if commit {
            TxStatus::Completed
        } else {
            credit(&mut pf.wallet, &hold.currency, hold.amount)?;
            TxStatus::Failed
        };
        let mut tx = hold.tx.clone();
        tx.status = status;
        self.holds.remove(transfer_id);
        let receipt = Receipt {
            transaction_id: transfer_id.to_string(),
            status,
            balances: pf.wallet.clone(),
            items: Vec::new(),
            replayed: false,
        };
        self.players.insert(hold.from.clone(), pf);
        w.push(Write::Player(hold.from.clone()));
        w.push(Write::HoldDel(transfer_id.to_string()));
        // A retry of the original request now returns the final status.
        if let Some(rec) = self
            .idem
            .get_mut(&hold.from)
            .and_then(|m| m.get_mut(&hold.idem_key))
        {
            if rec.receipt.transaction_id == transfer_id {
                rec.receipt.status = status;
                w.push(Write::IdemPut {
                    player: hold.from.clone(),
                    key: hold.idem_key.clone(),
                });
            }
        }
        w.push(Write::Tx {
            seq: hold.tx_seq,
            tx,
        });
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tag(key: &str, body: &str) -> IdemTag {
        IdemTag {
            key: key.into(),
            body_hash: body_hash(&body),
        }
    }

    fn grant(player: &str, amount: i64, key: &str) -> Request {
        Request {
            ts_ms: 1_000,
            cmd: Command::Grant {
                player: player.into(),
                currency: Some(("coins".into(), amount)),
                item: None,
                reason: "test".into(),
                payment_gateway_ref: None,
                tx_id: format!("g-{key}"),
                item_instance_id: format!("gi-{key}"),
                idem: tag(key, &format!("grant{amount}")),
            },
        }
    }

    fn purchase(player: &str, q: u64, key: &str) -> Request {
        Request {
            ts_ms: 2_000,
            cmd: Command::Purchase {
                player: player.into(),
                item_id: "potion".into(),
                quantity: q,
                currency: "coins".into(),
                price_each: 10,
                max_per_purchase: 5,
                stack_limit: 20,
                purchase_limit: Some(15),
                tx_id: format!("t-{key}"),
                item_instance_id: format!("i-{key}"),
                idem: tag(key, &format!("purchase{q}")),
            },
        }
    }

    #[test]
    fn purchase_debits_and_grants_atomically() {
        let mut s = ShardState::new();
        s.apply(&grant("p1", 25, "k1")).result.unwrap();
        let r = s.apply(&purchase("p1", 2, "k2")).result.unwrap();
        assert_eq!(r.balances["coins"], 5);
        assert_eq!(r.items[0].quantity, 2);
        // Not enough for one more pair: nothing changes.
        let before = s.player("p1").cloned();
        let e = s.apply(&purchase("p1", 2, "k3")).result.unwrap_err();
        assert!(matches!(
            e,
            EconomyError::InsufficientFunds {
                needed: 20,
                available: 5,
                ..
            }
        ));
        assert_eq!(s.player("p1").cloned(), before);
    }

    #[test]
    fn idempotent_replay_and_conflict() {
        let mut s = ShardState::new();
        s.apply(&grant("p1", 100, "k1")).result.unwrap();
        let first = s.apply(&purchase("p1", 1, "k2")).result.unwrap();
        let again = s.apply(&purchase("p1", 1, "k2"));
        let again = again.result.unwrap();
        assert!(again.replayed);
        assert_eq!(again.transaction_id, first.transaction_id);
        assert_eq!(s.player("p1").unwrap().wallet["coins"], 90);
        let e = s.apply(&purchase("p1", 2, "k2")).result.unwrap_err();
        assert_eq!(e, EconomyError::IdempotencyConflict);
    }

    #[test]
    fn limits_are_enforced() {
        let mut s = ShardState::new();
        s.apply(&grant("p1", 10_000, "k1")).result.unwrap();
        let e = s.apply(&purchase("p1", 6, "a")).result.unwrap_err();
        assert_eq!(e, EconomyError::limit("max_per_purchase"));
        let e = s.apply(&purchase("p1", 0, "b")).result.unwrap_err();
        assert_eq!(e, EconomyError::quantity("quantity"));
        for k in ["c", "d", "e"] {
            s.apply(&purchase("p1", 5, k)).result.unwrap();
        }
        // 15 bought: the per-player purchase limit is reached.
        let e = s.apply(&purchase("p1", 1, "f")).result.unwrap_err();
        assert_eq!(e, EconomyError::limit("purchase_limit"));
    }

    #[test]
    fn idempotency_retention_is_bounded() {
        let mut s = ShardState::new();
        for i in 0..(IDEMPOTENCY_KEYS_PER_PLAYER_MAX + 10) {
            s.apply(&grant("p1", 1, &format!("k{i}"))).result.unwrap();
        }
        assert_eq!(s.idem_count(), IDEMPOTENCY_KEYS_PER_PLAYER_MAX);
        assert!(s.idem_record("p1", "k0").is_none());
        // Older than the retention: evicted by a later apply.
        let mut later = grant("p2", 1, "x");
        later.ts_ms = 1_000 + IDEMPOTENCY_RETENTION_MS + 1;
        s.apply(&later).result.unwrap();
        let mut n = 0;
        while s.idem_count() > 1 && n < 100 {
            let mut r = grant("p2", 1, &format!("y{n}"));
            r.ts_ms = later.ts_ms;
            s.apply(&r).result.unwrap();
            n += 1;
        }
        assert!(s.idem_record("p1", "k500").is_none());
    }

    #[test]
    fn cross_shard_phases_are_idempotent() {
        let (mut a, mut b) = (ShardState::new(), ShardState::new());
        a.apply(&grant("p1", 50, "k1")).result.unwrap();
        let prep = Request {
            ts_ms: 3_000,
            cmd: Command::TransferPrepare {
                transfer_id: "t1".into(),
                from: "p1".into(),
                to: "p2".into(),
                to_shard: 1,
                currency: "coins".into(),
                amount: 30,
                idem: tag("x", "xfer"),
            },
        };
        assert_eq!(a.apply(&prep).result.unwrap().status, TxStatus::Pending);
        assert_eq!(a.player("p1").unwrap().wallet["coins"], 20);
        let cr = Request {
            ts_ms: 3_000,
            cmd: Command::TransferCredit {
                transfer_id: "t1".into(),
                from: "p1".into(),
                to: "p2".into(),
                currency: "coins".into(),
                amount: 30,
            },
        };
        b.apply(&cr).result.unwrap();
        assert!(b.apply(&cr).result.unwrap().replayed);
        assert_eq!(b.player("p2").unwrap().wallet["coins"], 30);
        let commit = Request {
            ts_ms: 3_000,
            cmd: Command::TransferCommit {
                transfer_id: "t1".into(),
            },
        };
        assert_eq!(a.apply(&commit).result.unwrap().status, TxStatus::Completed);
        assert!(a.apply(&commit).result.unwrap().replayed);
        assert!(a.hold("t1").is_none());
        // Retrying the original request now reports the final status.
        let again = a.apply(&prep).result.unwrap();
        assert!(again.replayed);
        assert_eq!(again.status, TxStatus::Completed);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grant(usize, i64),
        GrantItem(usize, u64),
        Buy(usize, u64, u8),
        Consume(usize, u64),
        Equip(usize, bool),
        Transfer(usize, usize, i64),
        Prepare(usize, usize, i64),
        Credit(u8),
        Resolve(u8, bool),
        Retry(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, -5..200i64).prop_map(|(p, a)| Op::Grant(p, a)),
            (0..4usize, 0..4u64).prop_map(|(p, q)| Op::GrantItem(p, q)),
            (0..4usize, 0..7u64, 0..2u8).prop_map(|(p, q, c)| Op::Buy(p, q, c)),
            (0..4usize, 0..4u64).prop_map(|(p, q)| Op::Consume(p, q)),
            (0..4usize, any::<bool>()).prop_map(|(p, e)| Op::Equip(p, e)),
            (0..4usize, 0..4usize, -5..120i64).prop_map(|(a, b, x)| Op::Transfer(a, b, x)),
            (0..4usize, 0..4usize, -5..120i64).prop_map(|(a, b, x)| Op::Prepare(a, b, x)),
            any::<u8>().prop_map(Op::Credit),
            (any::<u8>(), any::<bool>()).prop_map(|(i, c)| Op::Resolve(i, c)),
            any::<u8>().prop_map(Op::Retry),
        ]
    }

    const PLAYERS: [&str; 4] = ["p0", "p1", "p2", "p3"];
    const CURRENCIES: [&str; 2] = ["coins", "gems"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Shard A holds every sender; shard B receives cross-shard credits.
        /// Money: grants are the only source, purchases the only sink, holds
        /// not yet credited are in flight. Items: grants and purchases in,
        /// consumes out. No balance is ever negative.
        #[test]
        fn money_and_items_are_conserved(ops in proptest::collection::vec(op(), 1..120)) {
            let (mut a, mut b) = (ShardState::new(), ShardState::new());
            let mut minted = [0i128; 2];
            let mut burned = [0i128; 2];
            let mut items_in: i128 = 0;
            let mut items_out: i128 = 0;
            let mut history: Vec<Request> = Vec::new();
            let mut transfers: Vec<(String, String, String, i64)> = Vec::new();
            for (n, o) in ops.iter().enumerate() {
                let key = format!("k{n}");
                let ts_ms = 1_000 + n as i64;
                let cmd = match o.clone() {
                    Op::Grant(p, amt) => Command::Grant {
                        player: PLAYERS[p].into(), currency: Some((CURRENCIES[p % 2].into(), amt)),
                        item: None, reason: "r".into(), payment_gateway_ref: None,
                        tx_id: key.clone(), item_instance_id: key.clone(), idem: tag(&key, "g"),
                    },
                    Op::GrantItem(p, q) => Command::Grant {
                        player: PLAYERS[p].into(), currency: None, item: Some(("potion".into(), q, 10)),
                        reason: "r".into(), payment_gateway_ref: None,
                        tx_id: key.clone(), item_instance_id: key.clone(), idem: tag(&key, "gi"),
                    },
                    Op::Buy(p, q, c) => Command::Purchase {
                        player: PLAYERS[p].into(), item_id: "potion".into(), quantity: q,
                        currency: CURRENCIES[c as usize].into(), price_each: 7, max_per_purchase: 5,
                        stack_limit: 10, purchase_limit: Some(30), tx_id: key.clone(),
                        item_instance_id: key.clone(), idem: tag(&key, "b"),
                    },
                    Op::Consume(p, q) => {
                        let inst = a.player(PLAYERS[p]).and_then(|s| s.items.keys().next().cloned())
                            .unwrap_or_else(|| "none".into());
                        Command::Consume { player: PLAYERS[p].into(), item_instance_id: inst, quantity: q,
                            tx_id: key.clone(), idem: tag(&key, "c") }
                    }
                    Op::Equip(p, e) => {
                        let inst = a.player(PLAYERS[p]).and_then(|s| s.items.keys().next().cloned())
                            .unwrap_or_else(|| "none".into());
                        Command::Equip { player: PLAYERS[p].into(), item_instance_id: inst, equipped: e }
                    }
                    Op::Transfer(f, t, x) => Command::Transfer {
                        from: PLAYERS[f].into(), to: PLAYERS[t].into(), currency: "coins".into(), amount: x,
                        tx_id: key.clone(), idem: tag(&key, "t"),
                    },
                    Op::Prepare(f, t, x) => {
                        transfers.push((key.clone(), PLAYERS[f].into(), PLAYERS[t].into(), x));
                        Command::TransferPrepare {
                            transfer_id: key.clone(), from: PLAYERS[f].into(), to: PLAYERS[t].into(),
                            to_shard: 1, currency: "gems".into(), amount: x, idem: tag(&key, "p"),
                        }
                    }
                    Op::Credit(i) => {
                        if transfers.is_empty() { continue; }
                        let (id, f, t, x) = transfers[i as usize % transfers.len()].clone();
                        // Only the coordinator sends credits, and only for an open hold.
                        if a.hold(&id).is_none() { continue; }
                        let r = Request { ts_ms, cmd: Command::TransferCredit {
                            transfer_id: id, from: f, to: t, currency: "gems".into(), amount: x } };
                        let _ = b.apply(&r);
                        continue;
                    }
                    Op::Resolve(i, want_commit) => {
                        if transfers.is_empty() { continue; }
                        let id = transfers[i as usize % transfers.len()].0.clone();
                        // The coordinator's rule: commit after a credit, abort only
                        // after a recorded rejection or when no credit was sent yet.
                        let cmd = match b.credit_record(&id).map(|c| c.result.is_ok()) {
                            Some(true) => Command::TransferCommit { transfer_id: id },
                            Some(false) => Command::TransferAbort { transfer_id: id },
                            None if !want_commit => Command::TransferAbort { transfer_id: id },
                            None => continue,
                        };
                        let _ = a.apply(&Request { ts_ms, cmd });
                        continue;
                    }
                    Op::Retry(i) => {
                        if history.is_empty() { continue; }
                        let r = history[i as usize % history.len()].clone();
                        let before = (a.balance_total("coins"), a.balance_total("gems"));
                        let res = a.apply(&r).result;
                        if let Ok(rc) = res {
                            prop_assert!(rc.replayed || matches!(r.cmd, Command::Equip { .. }),
                                "retry executed twice: {:?}", r.cmd);
                        }
                        prop_assert_eq!(before, (a.balance_total("coins"), a.balance_total("gems")));
                        continue;
                    }
                };
                let req = Request { ts_ms, cmd };
                let res = a.apply(&req).result;
                if let Ok(rc) = &res {
                    match &req.cmd {
                        Command::Grant { currency: Some((c, amt)), .. } => {
                            minted[CURRENCIES.iter().position(|x| x == c).unwrap()] += *amt as i128;
                        }
                        Command::Grant { item: Some((_, q, _)), .. } => items_in += *q as i128,
                        Command::Purchase { currency, quantity, price_each, .. } => {
                            burned[CURRENCIES.iter().position(|x| x == currency).unwrap()] +=
                                (*quantity as i128) * (*price_each as i128);
                            items_in += *quantity as i128;
                        }
                        Command::Consume { quantity, .. } => items_out += *quantity as i128,
                        _ => {}
                    }
                    prop_assert!(!rc.replayed);
                    // Failures are not remembered, so only successes must replay.
                    history.push(req.clone());
                }
                // Invariants after every step.
                for st in [&a, &b] {
                    for (_, p) in st.players() {
                        for v in p.wallet.values() { prop_assert!(*v >= 0); }
                    }
                }
                for (ci, c) in CURRENCIES.iter().enumerate() {
                    let in_flight: i128 = a.holds()
                        .filter(|h| h.currency == *c)
                        .filter(|h| b.credit_record(&h.transfer_id).is_none_or(|r| r.result.is_err()))
                        .map(|h| h.amount as i128).sum();
                    prop_assert_eq!(a.balance_total(c) + b.balance_total(c) + in_flight,
                        minted[ci] - burned[ci], "currency {}", c);
                }
                let held: i128 = a.players().flat_map(|(_, p)| p.items.values())
                    .map(|i| i.quantity as i128).sum();
                prop_assert_eq!(held, items_in - items_out);
            }
        }
    }
}
