//! Access tokens: EdDSA (Ed25519) JWTs with a `kid`, one signing key per
//! region, public keys of every region in the keyring so any node verifies
//! any region's tokens. Only `EdDSA` is accepted: a token with `alg: HS256`
//! (or `none`) is rejected before any key is used.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use meridian_replication::{Batch, Storage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::RwLock;

pub const AUDIENCE: &str = "meridian";
/// Clock leeway when checking `exp`/`nbf`, for skew between regions.
pub const CLOCK_LEEWAY_S: u64 = 30;

/// What an access token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Player id.
    pub sub: String,
    /// Issuing region.
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    /// Refresh-token family (login) this token belongs to.
    pub sid: String,
    pub role: String,
}

#[derive(Serialize, Deserialize)]
struct StoredSigningKey {
    kid: String,
    pkcs8_b64: String,
}

/// A public key as published in the JWKS.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub kid: String,
    pub x: String,
    /// Region whose node signs with this key.
    pub region: String,
}

pub struct Keyring {
    region: String,
    kid: String,
    signing: EncodingKey,
    public: RwLock<HashMap<String, (PublicJwk, DecodingKey)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("token algorithm not accepted (EdDSA only)")]
    WrongAlgorithm,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

fn now_s() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

impl Keyring {
    /// Load this region's signing key from the store, creating it on first
    /// start, and every public key the store knows.
    pub async fn open(storage: &Storage, region: &str) -> anyhow::Result<Self> {
        let key = format!("keys/sign/{region}");
        let stored: StoredSigningKey = match storage.get(key.as_bytes())? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("cannot generate signing key"))?;
                let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                    .map_err(|_| anyhow::anyhow!("generated key does not parse"))?;
                let digest = Sha256::digest(pair.public_key().as_ref());
                let kid = format!("{region}-{}", hex::encode(&digest[..8]));
                let s = StoredSigningKey {
                    kid: kid.clone(),
                    pkcs8_b64: URL_SAFE_NO_PAD.encode(doc.as_ref()),
                };
                let jwk = PublicJwk {
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    alg: "EdDSA".into(),
                    use_: "sig".into(),
                    kid: kid.clone(),
                    x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                    region: region.to_string(),
                };
                let mut b = Batch::new();
                b.require_absent(key.clone())
                    .put(key.clone(), serde_json::to_vec(&s)?)
                    .put(format!("keys/pub/{kid}"), serde_json::to_vec(&jwk)?);
                storage.commit(&b).await?;
                s
            }
        };
        let pkcs8 = URL_SAFE_NO_PAD.decode(&stored.pkcs8_b64)?;
        let ring = Self {
            region: region.to_string(),
            kid: stored.kid,
            signing: EncodingKey::from_ed_der(&pkcs8),
            public: RwLock::new(HashMap::new()),
        };
        for (_, v) in storage.scan_prefix(b"keys/pub/", 10_000)? {
            let jwk: PublicJwk = serde_json::from_slice(&v)?;
            ring.add_public(jwk)?;
        }
        Ok(ring)
    }

    /// Accept tokens signed by `jwk` (another region's key, via replication).
    pub fn add_public(&self, jwk: PublicJwk) -> anyhow::Result<()> {
        let dk = DecodingKey::from_ed_components(&jwk.x)?;
        self.public
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(jwk.kid.clone(), (jwk, dk));
        Ok(())
    }

    pub fn jwks(&self) -> Vec<PublicJwk> {
        let mut keys: Vec<PublicJwk> = self
            .public
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(j, _)| j.clone())
            .collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        keys
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn issue(&self, player_id: &str, family: &str, ttl_s: u64) -> anyhow::Result<String> {
        let now = now_s();
        let claims = Claims {
            sub: player_id.to_string(),
            iss: self.region.clone(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + ttl_s,
            jti: uuid::Uuid::new_v4().to_string(),
            sid: family.to_string(),
            role: "player".into(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.signing)?)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::WrongAlgorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let public = self.public.read().unwrap_or_else(|p| p.into_inner());
        let (_, key) = public.get(&kid).ok_or(TokenError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[AUDIENCE]);
        v.leeway = CLOCK_LEEWAY_S;
        v.set_required_spec_claims(&["exp", "sub", "aud"]);
        match jsonwebtoken::decode::<Claims>(token, key, &v) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    Err(TokenError::WrongAlgorithm)
                }
                _ => Err(TokenError::Invalid(e.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ring(region: &str) -> (tempfile::TempDir, Storage, Keyring) {
        let d = tempfile::tempdir().unwrap();
        let s = Storage::open_sled(d.path()).unwrap();
        let k = Keyring::open(&s, region).await.unwrap();
        (d, s, k)
    }

    #[tokio::test]
    async fn issue_verify_and_reload_same_key() {
        let (_d, s, k) = ring("eu-west").await;
        let t = k.issue("p1", "fam", 60).unwrap();
        let c = k.verify(&t).unwrap();
        assert_eq!(c.sub, "p1");
        assert_eq!(c.iss, "eu-west");
        let again = Keyring::open(&s, "eu-west").await.unwrap();
        assert_eq!(again.kid(), k.kid());
        assert!(again.verify(&t).is_ok());
    }

    #[tokio::test]
    async fn other_region_key_needs_its_public_half() {
        let (_d1, _s1, a) = ring("eu-west").await;
        let (_d2, _s2, b) = ring("us-east").await;
        let t = b.issue("p1", "f", 60).unwrap();
        assert!(matches!(a.verify(&t), Err(TokenError::UnknownKey)));
        for jwk in b.jwks() {
            a.add_public(jwk).unwrap();
        }
        assert_eq!(a.verify(&t).unwrap().iss, "us-east");
    }

    #[tokio::test]
    async fn forged_expired_and_hs256_rejected() {
        let (_d, _s, k) = ring("eu-west").await;
        let t = k.issue("p1", "f", 60).unwrap();
        // Tamper with the payload.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"p2","aud":"meridian","exp":9999999999}"#);
        assert!(k.verify(&parts.join(".")).is_err());
        // HS256 token using the public key as an HMAC secret.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(k.kid().to_string());
        let claims = serde_json::json!({"sub":"p1","aud":"meridian","exp":now_s()+60});
        let hs = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"x")).unwrap();
        assert!(matches!(k.verify(&hs), Err(TokenError::WrongAlgorithm)));
        // Expired (beyond leeway).
        let old = k.issue("p1", "f", 0).unwrap();
        let mut c = k.verify(&old).unwrap();
        c.exp = now_s() - CLOCK_LEEWAY_S - 10;
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(k.kid().to_string());
        let expired = jsonwebtoken::encode(&h, &c, &k.signing).unwrap();
        assert!(matches!(k.verify(&expired), Err(TokenError::Expired)));
        assert!(matches!(k.verify("garbage"), Err(TokenError::Malformed)));
    }
}
