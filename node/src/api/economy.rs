//! Economy routes: wallet, inventory, store, grants, transfers, transactions,
//! payments, and `/admin/shards`. Every write goes through the shard's Raft
//! group (`meridian_replication::economy`) and returns after its commit.

use super::{AdminCaller, Body, Caller, Query, Shared};
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_replication::economy::{
    Catalog, CatalogItem, EconomyError, GrantRequest, InventoryItem, Receipt, ShardInfo,
    TransactionPage, WebhookOutcome, RETRY_AFTER_S,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/wallet/me", get(wallet))
        .route("/inventory/{player_id}", get(inventory))
        .route("/inventory/me/items/{item_id}/consume", post(consume))
        .route("/inventory/me/items/{item_id}/equip", post(equip))
        .route("/store/catalog", get(catalog))
        .route("/store/purchase", post(purchase))
        .route("/economy/grant", post(grant))
        .route("/economy/transfer", post(transfer))
        .route("/transactions/me", get(transactions))
        .route("/payments/intents", post(create_intent))
        .route("/payments/webhook", post(webhook))
        .route("/admin/shards", get(shards))
}

impl From<EconomyError> for ApiError {
    fn from(e: EconomyError) -> Self {
        let code = e.code();
        let msg = e.to_string();
        match e {
            EconomyError::UnknownItem(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, code, format!("item_id: {msg}"))
            }
            EconomyError::InvalidQuantity { field } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, format!("{field}: {msg}"))
            }
            EconomyError::InvalidInput { ref field, .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, format!("{field}: {msg}"))
            }
            EconomyError::CurrencyMismatch { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, format!("currency: {msg}"))
            }
            EconomyError::InsufficientFunds { .. } | EconomyError::LimitExceeded { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, msg)
            }
            EconomyError::NameTaken { .. } => ApiError::new(StatusCode::CONFLICT, code, msg),
            EconomyError::IdempotencyConflict => ApiError::new(
                StatusCode::CONFLICT,
                code,
                format!("idempotency_key: {msg}"),
            ),
            EconomyError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, code, msg),
            EconomyError::Unavailable { .. } => {
                tracing::warn!(error = %msg, "economy unavailable: 503");
                ApiError::unavailable(code, msg, RETRY_AFTER_S)
            }
            EconomyError::Storage(e) => ApiError::internal(e),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WalletView {
    pub balances: BTreeMap<String, i64>,
}

#[utoipa::path(get, path = "/wallet/me", responses((status = 200, body = WalletView), (status = 503)), security(("bearer" = [])))]
pub async fn wallet(
    State(state): State<Shared>,
    caller: Caller,
) -> Result<Json<WalletView>, ApiError> {
    let player = caller.player()?;
    Ok(Json(WalletView {
        balances: state.economy.wallet(player).await?,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct InventoryView {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<InventoryItem>,
}

#[utoipa::path(get, path = "/inventory/{player_id}", params(("player_id" = String, Path)),
    responses((status = 200, body = InventoryView), (status = 403)), security(("bearer" = [])))]
pub async fn inventory(
    State(state): State<Shared>,
    caller: Caller,
    Path(player_id): Path<String>,
) -> Result<Json<InventoryView>, ApiError> {
    let target = match (&caller, player_id.as_str()) {
        (Caller::Player { id }, "me") => id.clone(),
        (Caller::Player { id }, p) if p == id => id.clone(),
        (Caller::Player { .. }, _) => {
            return Err(ApiError::forbidden("players read only their own inventory"))
        }
        (_, p) => p.to_string(),
    };
    Ok(Json(InventoryView {
        items: state.economy.inventory(&target).await?,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct CatalogView {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<CatalogItem>,
}

#[utoipa::path(get, path = "/store/catalog", responses((status = 200, body = CatalogView)))]
pub async fn catalog(State(state): State<Shared>) -> Json<CatalogView> {
    Json(CatalogView {
        items: state.economy.catalog().items.clone(),
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    pub item_id: String,
    pub quantity: i64,
    pub currency: String,
    pub idempotency_key: String,
}

fn receipt(r: Receipt) -> Json<serde_json::Value> {
    Json(serde_json::to_value(r).unwrap_or_default())
}

#[utoipa::path(post, path = "/store/purchase", request_body = PurchaseRequest,
    responses((status = 200, description = "receipt: transaction_id, status, balances, items"), (status = 400), (status = 409), (status = 422), (status = 503)),
    security(("bearer" = [])))]
pub async fn purchase(
    State(state): State<Shared>,
    caller: Caller,
    Body(req): Body<PurchaseRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let player = caller.player()?;
    let r = state
        .economy
        .purchase(
            player,
            &req.item_id,
            req.quantity,
            &req.currency,
            &req.idempotency_key,
        )
        .await?;
    Ok(receipt(r))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    pub player_id: String,
    pub currency: Option<String>,
    pub amount: Option<i64>,
    pub item_id: Option<String>,
    pub quantity: Option<i64>,
    pub reason: String,
    pub idempotency_key: String,
}

#[utoipa::path(post, path = "/economy/grant", request_body = GrantBody,
    responses((status = 200, description = "receipt"), (status = 403)), security(("bearer" = [])))]
pub async fn grant(
    State(state): State<Shared>,
    caller: Caller,
    Body(req): Body<GrantBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if matches!(caller, Caller::Player { .. }) {
        return Err(ApiError::forbidden(
            "grants come from game servers and admins",
        ));
    }
    uuid::Uuid::parse_str(&req.player_id)
        .map_err(|_| ApiError::invalid("player_id", "not a player id (UUID)"))?;
    if state.accounts.get(&req.player_id)?.is_none() {
        return Err(ApiError::not_found(
            "player_not_found",
            "player_id: no such player",
        ));
    }
    let r = state
        .economy
        .grant(GrantRequest {
            player_id: req.player_id,
            currency: req.currency,
            amount: req.amount,
            item_id: req.item_id,
            quantity: req.quantity,
            reason: req.reason,
            idempotency_key: req.idempotency_key,
            payment_gateway_ref: None,
        })
        .await?;
    Ok(receipt(r))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    pub to_player_id: String,
    pub currency: String,
    pub amount: i64,
    pub idempotency_key: String,
}

#[utoipa::path(post, path = "/economy/transfer", request_body = TransferBody,
    responses((status = 200, description = "receipt"), (status = 422)), security(("bearer" = [])))]
pub async fn transfer(
    State(state): State<Shared>,
    caller: Caller,
    Body(req): Body<TransferBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let player = caller.player()?;
    if state
        .accounts
        .get(&req.to_player_id)
        .ok()
        .flatten()
        .is_none()
    {
        return Err(ApiError::not_found(
            "player_not_found",
            "to_player_id: no such player",
        ));
    }
    let r = state
        .economy
        .transfer(
            player,
            &req.to_player_id,
            &req.currency,
            req.amount,
            &req.idempotency_key,
        )
        .await?;
    Ok(receipt(r))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumeBody {
    pub quantity: i64,
    pub idempotency_key: String,
}

#[utoipa::path(post, path = "/inventory/me/items/{item_id}/consume", request_body = ConsumeBody,
    params(("item_id" = String, Path, description = "inventory item instance id")),
    responses((status = 200, description = "receipt"), (status = 404)), security(("bearer" = [])))]
pub async fn consume(
    State(state): State<Shared>,
    caller: Caller,
    Path(item_id): Path<String>,
    Body(req): Body<ConsumeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let player = caller.player()?;
    Ok(receipt(
        state
            .economy
            .consume(player, &item_id, req.quantity, &req.idempotency_key)
            .await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EquipBody {
    pub equipped: bool,
}

#[utoipa::path(post, path = "/inventory/me/items/{item_id}/equip", request_body = EquipBody,
    params(("item_id" = String, Path, description = "inventory item instance id")),
    responses((status = 200, description = "receipt"), (status = 404)), security(("bearer" = [])))]
pub async fn equip(
    State(state): State<Shared>,
    caller: Caller,
    Path(item_id): Path<String>,
    Body(req): Body<EquipBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let player = caller.player()?;
    Ok(receipt(
        state.economy.equip(player, &item_id, req.equipped).await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/transactions/me", params(PageQuery),
    responses((status = 200, description = "newest first: transactions, next_cursor")), security(("bearer" = [])))]
pub async fn transactions(
    State(state): State<Shared>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let player = caller.player()?;
    let max = meridian_replication::economy::TRANSACTIONS_PAGE_MAX;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > max {
        return Err(ApiError::invalid("limit", format!("must be 1..={max}")));
    }
    let page: TransactionPage = state
        .economy
        .transactions(player, limit, q.cursor.as_deref())
        .await?;
    Ok(Json(serde_json::to_value(page).unwrap_or_default()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntentBody {
    pub product_id: String,
}

#[utoipa::path(post, path = "/payments/intents", request_body = IntentBody,
    responses((status = 201, description = "payment intent with client_secret"), (status = 404)), security(("bearer" = [])))]
pub async fn create_intent(
    State(state): State<Shared>,
    caller: Caller,
    Body(req): Body<IntentBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let player = caller.player()?;
    let Some((gateway, _)) = &state.payments else {
        return Err(ApiError::not_found(
            "payments_disabled",
            "payments are not configured on this node",
        ));
    };
    let product = state
        .cfg
        .payments
        .products
        .iter()
        .find(|p| p.product_id == req.product_id)
        .ok_or_else(|| ApiError::not_found("unknown_product", "product_id: no such product"))?;
    let intent = gateway.create_intent(player, product)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(intent).unwrap_or_default()),
    ))
}

/// Signature header of webhook deliveries (`t=<unix s>,v1=<hex hmac>`).
pub const WEBHOOK_SIGNATURE_HEADER: &str = "meridian-signature";

#[utoipa::path(post, path = "/payments/webhook", request_body = String,
    responses((status = 200, description = "granted or ignored"), (status = 400, description = "bad signature")))]
pub async fn webhook(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some((_, processor)) = &state.payments else {
        return Err(ApiError::not_found(
            "payments_disabled",
            "payments are not configured on this node",
        ));
    };
    let sig = headers
        .get(WEBHOOK_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::invalid(WEBHOOK_SIGNATURE_HEADER, "missing"))?;
    match processor
        .handle(&body, sig, chrono::Utc::now().timestamp())
        .await?
    {
        WebhookOutcome::Granted(r) => {
            Ok(Json(serde_json::json!({"status": "granted", "receipt": r})))
        }
        WebhookOutcome::Ignored { kind } => {
            Ok(Json(serde_json::json!({"status": "ignored", "type": kind})))
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ShardsView {
    #[schema(value_type = Vec<Object>)]
    pub shards: Vec<ShardInfo>,
}

#[utoipa::path(get, path = "/admin/shards", responses((status = 200, body = ShardsView), (status = 403)), security(("bearer" = [])))]
pub async fn shards(State(state): State<Shared>, _admin: AdminCaller) -> Json<ShardsView> {
    Json(ShardsView {
        shards: state.economy.shards(),
    })
}

/// The catalog used when the config has none: enough to try the store.
pub fn default_catalog() -> Catalog {
    let toml = r#"
[[items]]
item_id = "sword"
name = "Iron Sword"
prices = { coins = 100 }
max_per_purchase = 1
stack_limit = 5

[[items]]
item_id = "potion"
name = "Health Potion"
prices = { coins = 10, gems = 1 }
max_per_purchase = 20
stack_limit = 99

[[items]]
item_id = "gold_skin"
name = "Gold Skin"
prices = { gems = 50 }
max_per_purchase = 1
stack_limit = 1
purchase_limit_per_player = 1
"#;
    toml::from_str(toml).expect("built-in catalog parses")
}
