//! Real-money purchases through a [`PaymentGateway`], Stripe style: the
//! node creates a payment *intent* at the gateway, the client pays the
//! gateway directly (no card data ever reaches Meridian), and the gateway
//! calls a webhook signed with a shared secret. [`WebhookProcessor`]
//! verifies the signature and grants the intent's goods exactly once.
//!
//! Exactly once: the grant carries the intent id as `payment_gateway_ref`,
//! and the shard state machine keeps one record per reference forever (see
//! [`super::state::PaymentRecord`]), so a webhook delivered twice, late, or
//! out of order (e.g. `processing` after `succeeded`) grants once. Only
//! `payment_intent.succeeded` grants; other event types are acknowledged and
//! ignored.
//!
//! Signature (as Stripe's `Stripe-Signature`): header `t={unix_s},v1={hex}`
//! where `hex = HMAC-SHA256(secret, "{t}.{body}")`; a timestamp further than
//! [`WEBHOOK_TOLERANCE_S`] from now is rejected (replay protection).
//!
//! Not for: refunds, disputes, or talking to a real provider (an adapter
//! implementing [`PaymentGateway`] does that).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::facade::{Economy, GrantRequest};
use super::model::{validate_player_id, EconomyError, Receipt};

/// Most seconds between a webhook's signed timestamp and now.
pub const WEBHOOK_TOLERANCE_S: i64 = 300;
/// Largest accepted webhook body, in bytes.
pub const WEBHOOK_BODY_BYTES_MAX: usize = 64 * 1024;
/// Most intents the test gateway keeps.
pub const TEST_GATEWAY_INTENTS_MAX: usize = 100_000;

/// A payment intent: what the player pays (in the gateway's fiat currency)
/// and what the game grants once it is paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub intent_id: String,
    pub player_id: String,
    /// Price in minor units (cents) of `fiat_currency`.
    pub amount_minor: i64,
    pub fiat_currency: String,
    pub grant_currency: String,
    pub grant_amount: i64,
    /// Handed to the client to complete payment at the gateway.
    pub client_secret: String,
}

/// A real-money product (config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentProduct {
    pub product_id: String,
    pub amount_minor: i64,
    pub fiat_currency: String,
    pub grant_currency: String,
    pub grant_amount: i64,
}

/// A verified webhook event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: PaymentIntent,
}

/// The seam to a payment provider.
pub trait PaymentGateway: Send + Sync + 'static {
    /// Create an intent for `player_id` buying `product`.
    fn create_intent(
        &self,
        player_id: &str,
        product: &PaymentProduct,
    ) -> Result<PaymentIntent, EconomyError>;

    /// Verify a webhook's signature header and parse its body.
    fn verify_webhook(
        &self,
        body: &[u8],
        signature_header: &str,
        now_s: i64,
    ) -> Result<WebhookEvent, EconomyError>;
}

/// HMAC-SHA256 (RFC 2104) over `msg`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn to_hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 0xf) as usize] as char);
    }
    s
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The signature header for `body` at time `t`.
pub fn sign_webhook(secret: &[u8], body: &[u8], t: i64) -> String {
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    format!("t={t},v1={}", to_hex(&hmac_sha256(secret, &msg)))
}

/// Check a `t=..,v1=..` header against `body`; any `v1` may match (secret
/// rotation).
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: &str,
    now_s: i64,
) -> Result<(), EconomyError> {
    let bad = |r: &str| EconomyError::invalid("signature", r);
    if body.len() > WEBHOOK_BODY_BYTES_MAX {
        return Err(bad("body too large"));
    }
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v.to_string()),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| bad("missing timestamp"))?;
    if (now_s - t).abs() > WEBHOOK_TOLERANCE_S {
        return Err(bad("timestamp outside tolerance"));
    }
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    let want = to_hex(&hmac_sha256(secret, &msg));
    if sigs.iter().any(|s| ct_eq(s.as_bytes(), want.as_bytes())) {
        Ok(())
    } else {
        Err(bad("no matching signature"))
    }
}

/// A gateway for tests and local development: intents in memory, webhooks
/// signed with a shared secret exactly like the real flow.
pub struct TestGateway {
    secret: Vec<u8>,
    intents: Mutex<BTreeMap<String, PaymentIntent>>,
}

impl TestGateway {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
            intents: Mutex::new(BTreeMap::new()),
        }
    }

    /// What the provider would POST after the client paid (or failed to):
    /// `(body, signature header)`. `kind` e.g. `payment_intent.succeeded`.
    pub fn webhook(
        &self,
        intent_id: &str,
        kind: &str,
        event_id: &str,
        now_s: i64,
    ) -> Option<(Vec<u8>, String)> {
        let intent = self
            .intents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(intent_id)
            .cloned()?;
        let ev = WebhookEvent {
            id: event_id.to_string(),
            kind: kind.to_string(),
            created: now_s,
            data: intent,
        };
        let body = serde_json::to_vec(&ev).ok()?;
        let sig = sign_webhook(&self.secret, &body, now_s);
        Some((body, sig))
    }
}

impl PaymentGateway for TestGateway {
    fn create_intent(
        &self,
        player_id: &str,
        product: &PaymentProduct,
    ) -> Result<PaymentIntent, EconomyError> {
        validate_player_id("player_id", player_id)?;
        let mut intents = self.intents.lock().unwrap_or_else(|e| e.into_inner());
        if intents.len() >= TEST_GATEWAY_INTENTS_MAX {
            return Err(EconomyError::limit("test_gateway_intents_max"));
        }
        let id = format!("pi_{}", uuid::Uuid::new_v4().simple());
        let intent = PaymentIntent {
            intent_id: id.clone(),
            player_id: player_id.to_string(),
            amount_minor: product.amount_minor,
            fiat_currency: product.fiat_currency.clone(),
            grant_currency: product.grant_currency.clone(),
            grant_amount: product.grant_amount,
            client_secret: format!("{id}_secret_{}", uuid::Uuid::new_v4().simple()),
        };
        intents.insert(id, intent.clone());
        Ok(intent)
    }

    fn verify_webhook(
        &self,
        body: &[u8],
        signature_header: &str,
        now_s: i64,
    ) -> Result<WebhookEvent, EconomyError> {
        verify_signature(&self.secret, body, signature_header, now_s)?;
        serde_json::from_slice(body).map_err(|e| EconomyError::invalid("body", &e.to_string()))
    }
}

/// What a webhook delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Goods granted (or, `receipt.replayed`, granted by an earlier delivery).
    Granted(Receipt),
    /// A verified event that grants nothing (e.g. `payment_failed`).
    Ignored { kind: String },
}

/// Turns verified webhooks into exactly-once grants.
pub struct WebhookProcessor {
    economy: Economy,
    gateway: std::sync::Arc<dyn PaymentGateway>,
}

impl WebhookProcessor {
    pub fn new(economy: Economy, gateway: std::sync::Arc<dyn PaymentGateway>) -> Self {
        Self { economy, gateway }
    }

    /// Handle one delivery. A bad signature is `InvalidInput{field:
    /// "signature"}` (answer 400); `Unavailable` means answer 503 so the
    /// provider redelivers.
    pub async fn handle(
        &self,
        body: &[u8],
        signature_header: &str,
        now_s: i64,
    ) -> Result<WebhookOutcome, EconomyError> {
        let ev = self.gateway.verify_webhook(body, signature_header, now_s)?;
        if ev.kind != "payment_intent.succeeded" {
            return Ok(WebhookOutcome::Ignored { kind: ev.kind });
        }
        let i = ev.data;
        let receipt = self
            .economy
            .grant(GrantRequest {
                player_id: i.player_id,
                currency: Some(i.grant_currency),
                amount: Some(i.grant_amount),
                item_id: None,
                quantity: None,
                reason: "payment".into(),
                idempotency_key: format!("pay:{}", i.intent_id),
                payment_gateway_ref: Some(i.intent_id),
            })
            .await?;
        Ok(WebhookOutcome::Granted(receipt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::economy::{Catalog, EconomyConfig};
    use std::sync::Arc;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            to_hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signatures_are_checked() {
        let h = sign_webhook(b"s", b"{}", 1000);
        assert!(verify_signature(b"s", b"{}", &h, 1000).is_ok());
        assert!(verify_signature(b"s", b"{ }", &h, 1000).is_err());
        assert!(verify_signature(b"other", b"{}", &h, 1000).is_err());
        assert!(verify_signature(b"s", b"{}", &h, 1000 + WEBHOOK_TOLERANCE_S + 1).is_err());
        assert!(verify_signature(b"s", b"{}", "v1=00", 1000).is_err());
        assert!(verify_signature(b"s", b"{}", "", 1000).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhook_grants_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::store::Storage::open_sled(dir.path()).unwrap();
        let cfg = EconomyConfig {
            shards: 2,
            catalog: Catalog::default(),
            ..Default::default()
        };
        let eco = Economy::open(storage, cfg).await.unwrap();
        let gw = Arc::new(TestGateway::new(b"whsec_test"));
        let proc = WebhookProcessor::new(eco.clone(), gw.clone());
        let product = PaymentProduct {
            product_id: "gems_100".into(),
            amount_minor: 499,
            fiat_currency: "usd".into(),
            grant_currency: "gems".into(),
            grant_amount: 100,
        };
        let intent = gw.create_intent("payer", &product).unwrap();
        let now = 1_700_000_000;
        // Out of order: a late "processing" and a "failed" before success.
        let (b0, s0) = gw
            .webhook(
                &intent.intent_id,
                "payment_intent.payment_failed",
                "evt_0",
                now,
            )
            .unwrap();
        assert!(matches!(
            proc.handle(&b0, &s0, now).await.unwrap(),
            WebhookOutcome::Ignored { .. }
        ));
        let (b1, s1) = gw
            .webhook(&intent.intent_id, "payment_intent.succeeded", "evt_1", now)
            .unwrap();
        let WebhookOutcome::Granted(r1) = proc.handle(&b1, &s1, now).await.unwrap() else {
            panic!("not granted")
        };
        assert!(!r1.replayed);
        // Delivered twice, and redelivered later as a new event id.
        let WebhookOutcome::Granted(r2) = proc.handle(&b1, &s1, now).await.unwrap() else {
            panic!("not granted")
        };
        assert!(r2.replayed);
        let (b3, s3) = gw
            .webhook(
                &intent.intent_id,
                "payment_intent.succeeded",
                "evt_2",
                now + 60,
            )
            .unwrap();
        let WebhookOutcome::Granted(r3) = proc.handle(&b3, &s3, now + 60).await.unwrap() else {
            panic!("not granted")
        };
        assert!(r3.replayed);
        let (b4, s4) = gw
            .webhook(&intent.intent_id, "payment_intent.processing", "evt_3", now)
            .unwrap();
        assert!(matches!(
            proc.handle(&b4, &s4, now).await.unwrap(),
            WebhookOutcome::Ignored { .. }
        ));
        assert_eq!(eco.wallet("payer").await.unwrap()["gems"], 100);
        let txs = eco
            .transactions("payer", 10, None)
            .await
            .unwrap()
            .transactions;
        assert_eq!(txs.len(), 1);
        assert_eq!(
            txs[0].payment_gateway_ref.as_deref(),
            Some(intent.intent_id.as_str())
        );
        // A forged webhook is rejected and grants nothing.
        let forged = sign_webhook(b"wrong", &b1, now);
        assert!(proc.handle(&b1, &forged, now).await.is_err());
        assert_eq!(eco.wallet("payer").await.unwrap()["gems"], 100);
        eco.shutdown().await;
    }
}
