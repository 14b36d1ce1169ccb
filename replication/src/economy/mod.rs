//! The economy: wallets, inventory, store purchases, grants, transfers and
//! the transaction log, replicated as per-shard Raft groups (openraft) and
//! persisted in the node's [`Storage`](crate::store::Storage).
//!
//! For: money and items, which must never be wrong: no double spend, no
//! duplicated item, no lost acknowledged purchase, no negative balance.
//! Not for: HTTP, auth or payment-provider I/O (the node owns those), and
//! not for high-rate merge-able data such as stats (use the CRDTs).
//!
//! # Layout
//! - [`model`]: the error enum, [`Catalog`], [`InventoryItem`],
//!   [`Transaction`], [`Receipt`]. Plain data.
//! - [`state`]: the state machine of one shard, pure and deterministic.
//! - [`raft`]: the openraft type config, log + state machine on `Storage`,
//!   and the network seam ([`ShardNetwork`], [`InProcessNetwork`]).
//! - [`Economy`]: the facade the HTTP handlers call.
//! - [`payment`]: the [`PaymentGateway`] trait and a test gateway with
//!   Stripe-like signed webhooks.
//!
//! # Sharding
//! A player's shard is the first 8 bytes (big endian) of SHA-256 of the
//! player id, modulo the shard count ([`shard_of`]). The count (16 by
//! default, at most [`SHARDS_MAX`]) is fixed when the store is first opened
//! and persisted at `econ/config`. Each shard is one Raft group; on a single
//! node it has one voter (this node) and is initialized on first start.
//!
//! # Guarantees
//! - **Writes** (`purchase`, `grant`, `consume`, `equip`, `transfer`) return
//!   only after their log entry is committed (fsynced on a quorum) and
//!   applied on this node. If the shard has no leader within
//!   `leader_wait_ms`, or this node is not the leader, or the commit takes
//!   longer than `commit_timeout_ms`, they fail fast with the retryable
//!   [`EconomyError::Unavailable`] (503 + `Retry-After`). After a timeout the
//!   outcome is unknown; a retry with the same idempotency key is safe.
//! - **Idempotency**: every money/item write takes a key, scoped to the
//!   player. The first result, success or business-rule refusal, is stored
//!   with a SHA-256 of the request body; the same key + body returns it (a
//!   receipt with `replayed: true`, or the same refusal), another body is
//!   [`EconomyError::IdempotencyConflict`] (409). So a request a client saw
//!   refused can never apply later, not even a delayed copy of it (found by
//!   the simulator); trying again after a top-up takes a new key.
//!   Keys are kept at least 24 h ([`IDEMPOTENCY_RETENTION_MS`]), at most
//!   [`IDEMPOTENCY_KEYS_PER_PLAYER_MAX`] per player (oldest evicted first).
//! - **Reads** (`wallet`, `inventory`, `transactions`) are linearizable: the
//!   node confirms it still leads the shard (openraft's
//!   `ensure_linearizable`, a heartbeat round to a quorum) and waits until
//!   its state machine applied everything committed, then reads its local
//!   applied state. So a read after a write by the same player sees it.
//!   `catalog()` is local config.
//! - **Durability (fsync policy)**: a log entry is fsynced before openraft
//!   counts it (`Storage::commit`, group commit: concurrent appends of all
//!   shards share one fsync; there is no timed-flush mode), and so is every
//!   vote. The state machine writes its changes and its applied log id in
//!   one atomic batch without its own fsync: a restart re-applies the
//!   durable log from the applied id. A snapshot fsyncs before openraft may
//!   purge the log behind it. Tested with a store that keeps only fsynced
//!   data across a simulated power cut.
//! - **Backpressure**: at most `writes_in_flight_per_shard_max` writes wait
//!   per shard; more fail fast with `Unavailable`.
//! - **Several nodes**: reads and writes are served by the shard's leader;
//!   on another node they fail fast with `Unavailable` ("led by node N").
//!   Forwarding to the leader is the mesh's job, as is membership change
//!   (initial voters come from `bootstrap_members`). Raft RPCs travel through
//!   [`ShardNetwork`] as serialized bytes; the receiving node hands them to
//!   [`Economy::handle_raft_rpc`].
//!
//! # Cross-shard transfer (two phases over the two shards' logs)
//! 1. **Prepare** on the sender's shard A (one entry, idempotent by the
//!    sender's key): check funds, debit the sender, record a *hold*
//!    `{transfer_id, to, to_shard, amount}` and a `pending` transaction.
//! 2. **Credit** on the receiver's shard B (one entry, keyed by
//!    `transfer_id`): credit the receiver once and record the decision
//!    (credited, or rejected e.g. by `balance_max`). A repeated credit
//!    replays the recorded decision and changes nothing.
//! 3. **Commit** on A after a credit: drop the hold, mark the transaction
//!    `completed`. **Abort** on A only after B *recorded* a rejection: refund
//!    the sender, mark it `failed`. Both are no-ops if the hold is gone.
//!
//! A crash between any two steps leaves a hold on A. The recovery task runs
//! when the economy opens and then every `recovery_interval_ms`: for every
//! hold on a shard this node leads it repeats step 2 (idempotent) and then
//! step 3. While B is unreachable the hold stays (money in flight, never
//! lost, never doubled); a hold is never aborted while B's decision is
//! unknown. Credit records are kept [`CREDIT_RETENTION_MS`] (7 days), far
//! beyond any hold's life. Money in flight is counted by the holds.
//!
//! # Known costs
//! A shard's wallets, inventories, idempotency records and holds are kept
//! in memory (loaded at open); transactions are only on disk. A snapshot is
//! a full copy of the shard's records (history included), taken every
//! `snapshot_logs_since_last` entries and stored once in the store.
//!
//! # Limits
//! Every list has a named bound: [`TRANSACTIONS_PAGE_MAX`],
//! [`HOLDS_PER_SHARD_MAX`], [`INVENTORY_STACKS_PER_PLAYER_MAX`],
//! [`IDEMPOTENCY_KEYS_PER_PLAYER_MAX`], [`EVICTIONS_PER_APPLY_MAX`],
//! [`CATALOG_ITEMS_MAX`]. The transaction log itself is an audit log and is
//! not truncated; it is read in pages.

mod facade;
pub mod model;
pub mod payment;
pub mod raft;
pub mod state;

pub use facade::{
    shard_of, Economy, EconomyConfig, GrantRequest, RaftTransport, ShardInfo, TransactionPage,
    DIRECTORY_NAME_BYTES_MAX, HOLD_RECOVERY_AGE_MS, SHARDS_DEFAULT, SHARDS_MAX,
    TRANSACTIONS_PAGE_MAX,
};
pub use model::{
    Catalog, CatalogItem, EconomyError, InventoryItem, Receipt, Transaction, TxKind, TxStatus,
    CATALOG_ITEMS_MAX, RETRY_AFTER_S,
};
pub use payment::{
    PaymentGateway, PaymentIntent, PaymentProduct, TestGateway, WebhookEvent, WebhookOutcome,
    WebhookProcessor,
};
pub use raft::{
    BoxFuture, InProcessNetwork, NodeId, RaftRpc, RaftRpcHandler, RaftRpcKind, ShardNetwork,
};
pub use state::{
    CREDIT_RETENTION_MS, EVICTIONS_PER_APPLY_MAX, HOLDS_PER_SHARD_MAX,
    IDEMPOTENCY_KEYS_PER_PLAYER_MAX, IDEMPOTENCY_RETENTION_MS, INVENTORY_STACKS_PER_PLAYER_MAX,
};

#[cfg(test)]
mod tests;
