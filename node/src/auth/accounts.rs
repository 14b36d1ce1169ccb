//! Accounts: registration, password and device login, refresh-token rotation
//! with reuse detection, logout.
//!
//! Keys (all written in one atomic, fsynced batch per operation):
//! - `acct/{player_id}` → [`Account`] (JSON)
//! - `user/{username_key}`, `mail/{email}`, `dev/{sha256(device_id)}` → player id
//! - `rt/{sha256(refresh_token)}` → [`RefreshRecord`]; `rtf/{family}` → [`Family`]
//!
//! Refresh rotation: every refresh marks the presented token spent and issues
//! a new one in the same family (one family = one login). Presenting a spent
//! token again is reuse: the whole family is revoked, so neither the thief nor
//! the victim can refresh any more and must log in again. Access tokens carry
//! their login (`sid`); every request checks that the login is not revoked
//! ([`Accounts::login_revoked`]), so a logout or a detected reuse also ends
//! that login's access tokens at once, not at their `exp`.

use super::names::{self, Username};
use super::tokens::Keyring;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meridian_replication::{Batch, Storage, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// argon2id parameters (OWASP's first recommendation): 19 MiB, 2 passes, 1 lane.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_PARALLELISM: u32 = 1;
/// Devices linked to one account.
pub const DEVICES_PER_ACCOUNT_MAX: usize = 16;
/// Usernames cached in memory for leaderboard pages (they never change);
/// the cache is cleared when full.
pub const USERNAME_CACHE_MAX: usize = 1_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub player_id: String,
    pub username: String,
    pub username_key: String,
    pub email: Option<String>,
    /// argon2id PHC string; `None` for device-only (guest) accounts.
    pub password_hash: Option<String>,
    /// `password` or `device`.
    pub auth_provider_id: String,
    pub devices: Vec<String>,
    pub home_region: String,
    pub created_at: String,
    pub last_login: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefreshRecord {
    pub player_id: String,
    pub family: String,
    pub spent: bool,
    pub expires_at: i64,
    /// The region that spent it. Replicas merging two different spenders of
    /// one token have found a reuse across regions and revoke the login.
    #[serde(default)]
    pub spent_in: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Family {
    pub player_id: String,
    pub revoked: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub player_id: String,
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("username already taken")]
    UsernameTaken,
    #[error("email already registered")]
    EmailTaken,
    #[error("wrong username/email or password")]
    BadCredentials,
    #[error("refresh token unknown, expired or revoked")]
    BadRefresh,
    #[error("refresh token was already used; this login has been revoked")]
    RefreshReused,
    #[error("refresh token belongs to another player")]
    NotYours,
    /// The name directory has no quorum (503, retryable).
    #[error("name directory unavailable: {0}")]
    Unavailable(String),
    /// A record this request needs is still arriving by replication from
    /// another region (503, retryable).
    #[error("{0}")]
    Replicating(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// How long a login waits for an account record that is still replicating.
pub const REPLICATING_WAIT: Duration = Duration::from_secs(2);

fn internal(e: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(e.to_string())
}

fn invalid(field: &'static str, message: String) -> AuthError {
    AuthError::Invalid { field, message }
}

/// The cluster-wide name directory (Raft, linearizable): a username or
/// email is claimed there before the account is created locally.
pub trait NameDirectory: Send + Sync + 'static {
    /// Claim `name` for `owner`; `Ok(false)` when someone else holds it.
    fn claim(&self, name: String, owner: String) -> BoxFuture<Result<bool, AuthError>>;
    /// Release `name` if `owner` holds it (best effort).
    fn release(&self, name: String, owner: String) -> BoxFuture<()>;
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

pub struct Accounts {
    directory: std::sync::OnceLock<Arc<dyn NameDirectory>>,
    storage: Storage,
    keys: Arc<Keyring>,
    region: String,
    access_ttl_s: u64,
    refresh_ttl_s: u64,
    hashing: Semaphore,
    /// Verified against when the account does not exist, so a login for an
    /// unknown name costs the same time as a wrong password.
    dummy_hash: String,
    usernames: std::sync::RwLock<std::collections::HashMap<String, String>>,
}

fn sha_key(prefix: &str, secret: &str) -> Vec<u8> {
    let d = Sha256::digest(secret.as_bytes());
    let mut k = prefix.as_bytes().to_vec();
    k.extend_from_slice(hex::encode(d).as_bytes());
    k
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_ITERATIONS,
        ARGON2_PARALLELISM,
        None,
    )
    .expect("static argon2 params are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| internal("rng"))?;
    let salt = SaltString::encode_b64(&salt).map_err(internal)?;
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(internal)?
        .to_string())
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

fn random_token() -> Result<String, AuthError> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| internal("rng"))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Accounts {
    pub fn new(
        storage: Storage,
        keys: Arc<Keyring>,
        region: &str,
        access_ttl_s: u64,
        refresh_ttl_s: u64,
        hash_concurrency: usize,
    ) -> Result<Self, AuthError> {
        Ok(Self {
            directory: Default::default(),
            storage,
            keys,
            region: region.to_string(),
            access_ttl_s,
            refresh_ttl_s,
            hashing: Semaphore::new(hash_concurrency.max(1)),
            dummy_hash: hash_password("meridian-dummy-password")?,
            usernames: Default::default(),
        })
    }

    /// Use a cluster-wide name directory for registrations.
    pub fn set_directory(&self, d: Arc<dyn NameDirectory>) {
        let _ = self.directory.set(d);
    }

    /// Claim the names in the directory (none configured: local only).
    /// On failure every name claimed so far is released.
    async fn claim_names(
        &self,
        owner: &str,
        names: &[(String, AuthError)],
    ) -> Result<(), AuthError> {
        let Some(d) = self.directory.get() else {
            return Ok(());
        };
        let mut claimed: Vec<String> = Vec::new();
        for (name, taken) in names {
            let res = d.claim(name.clone(), owner.to_string()).await;
            let err = match res {
                Ok(true) => {
                    claimed.push(name.clone());
                    continue;
                }
                Ok(false) => match taken {
                    AuthError::EmailTaken => AuthError::EmailTaken,
                    _ => AuthError::UsernameTaken,
                },
                Err(e) => e,
            };
            for n in claimed {
                d.release(n, owner.to_string()).await;
            }
            return Err(err);
        }
        Ok(())
    }

    /// Release directory names (failed sign-up, erasure).
    pub async fn release_names(&self, owner: &str, names: Vec<String>) {
        if let Some(d) = self.directory.get() {
            for n in names {
                d.release(n, owner.to_string()).await;
            }
        }
    }

    pub fn keys(&self) -> &Arc<Keyring> {
        &self.keys
    }

    /// Run argon2 off the async threads, at most `hash_concurrency` at once.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self.hashing.acquire().await.map_err(internal)?;
        tokio::task::spawn_blocking(f).await.map_err(internal)
    }

    pub fn get(&self, player_id: &str) -> Result<Option<Account>, AuthError> {
        match self.storage.get(format!("acct/{player_id}").as_bytes())? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(internal)?)),
            None => Ok(None),
        }
    }

    /// A player's username, from memory when seen before.
    pub fn username(&self, player_id: &str) -> Option<String> {
        if let Some(u) = self
            .usernames
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(player_id)
        {
            return Some(u.clone());
        }
        let name = self.get(player_id).ok().flatten()?.username;
        let mut cache = self.usernames.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= USERNAME_CACHE_MAX {
            cache.clear();
        }
        cache.insert(player_id.to_string(), name.clone());
        Some(name)
    }

    fn lookup(&self, index_key: &[u8]) -> Result<Option<Account>, AuthError> {
        match self.storage.get(index_key)? {
            Some(id) => self.get(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// [`Self::lookup`] of an index key whose account may still be arriving:
    /// the same device's first login in two regions at once creates two
    /// accounts, the `dev/` key merges to one of them, and that key can be
    /// seen here before the winner's `acct/` record is. Waits up to
    /// [`REPLICATING_WAIT`] for the record, then a retryable 503.
    async fn lookup_replicating(&self, index_key: &[u8]) -> Result<Option<Account>, AuthError> {
        let deadline = tokio::time::Instant::now() + REPLICATING_WAIT;
        loop {
            let Some(id) = self.storage.get(index_key)? else {
                return Ok(None);
            };
            if let Some(a) = self.get(&String::from_utf8_lossy(&id))? {
                return Ok(Some(a));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AuthError::Replicating(
                    "this device's account is still replicating from another region; retry".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn register(
        &self,
        username: &str,
        password: &str,
        email: Option<&str>,
    ) -> Result<(Account, TokenPair), AuthError> {
        let Username { display, key } =
            names::normalize_username(username).map_err(|m| invalid("username", m))?;
        names::check_password(password, Some(&key)).map_err(|m| invalid("password", m))?;
        let email = email
            .map(names::normalize_email)
            .transpose()
            .map_err(|m| invalid("email", m))?;
        // Cheap pre-checks before spending 20 ms on argon2; the batch below
        // re-checks atomically.
        if self
            .storage
            .get(format!("user/{key}").as_bytes())?
            .is_some()
        {
            return Err(AuthError::UsernameTaken);
        }
        let pw = password.to_string();
        let hash = self.blocking(move || hash_password(&pw)).await??;
        let now = now_rfc3339();
        let player_id = uuid::Uuid::now_v7().to_string();
        let mut claims = vec![(format!("user:{key}"), AuthError::UsernameTaken)];
        if let Some(e) = &email {
            claims.push((format!("mail:{e}"), AuthError::EmailTaken));
        }
        self.claim_names(&player_id, &claims).await?;
        let account = Account {
            player_id,
            username: display,
            username_key: key.clone(),
            email: email.clone(),
            password_hash: Some(hash),
            auth_provider_id: "password".into(),
            devices: Vec::new(),
            home_region: self.region.clone(),
            created_at: now.clone(),
            last_login: now,
        };
        let mut b = Batch::new();
        b.require_absent(format!("user/{key}"))
            .put(format!("user/{key}"), account.player_id.clone());
        if let Some(e) = &email {
            b.require_absent(format!("mail/{e}"))
                .put(format!("mail/{e}"), account.player_id.clone());
        }
        let tokens = self
            .create_account_and_login(b, &account)
            .await
            .map_err(|e| match e {
                AuthError::Store(StoreError::Conflict(k)) if k.starts_with("mail/") => {
                    AuthError::EmailTaken
                }
                AuthError::Store(StoreError::Conflict(_)) => AuthError::UsernameTaken,
                other => other,
            });
        match tokens {
            Ok(tokens) => Ok((account, tokens)),
            Err(e) => {
                let names = claims.into_iter().map(|(n, _)| n).collect();
                self.release_names(&account.player_id, names).await;
                Err(e)
            }
        }
    }

    async fn create_account_and_login(
        &self,
        mut b: Batch,
        account: &Account,
    ) -> Result<TokenPair, AuthError> {
        b.require_absent(format!("acct/{}", account.player_id)).put(
            format!("acct/{}", account.player_id),
            serde_json::to_vec(account).map_err(internal)?,
        );
        let (tokens, login) = self.new_login(&account.player_id)?;
        b.ops.extend(login.ops);
        self.storage.commit(&b).await?;
        Ok(tokens)
    }

    /// A new refresh-token family with its first token, as batch writes.
    fn new_login(&self, player_id: &str) -> Result<(TokenPair, Batch), AuthError> {
        let family = uuid::Uuid::new_v4().to_string();
        let mut b = Batch::new();
        let fam = Family {
            player_id: player_id.to_string(),
            revoked: false,
            created_at: chrono::Utc::now().timestamp(),
        };
        b.put(
            format!("rtf/{family}"),
            serde_json::to_vec(&fam).map_err(internal)?,
        );
        let pair = self.next_token(player_id, &family, &mut b)?;
        Ok((pair, b))
    }

    fn next_token(
        &self,
        player_id: &str,
        family: &str,
        b: &mut Batch,
    ) -> Result<TokenPair, AuthError> {
        let refresh = random_token()?;
        let rec = RefreshRecord {
            player_id: player_id.to_string(),
            family: family.to_string(),
            spent: false,
            expires_at: chrono::Utc::now().timestamp() + self.refresh_ttl_s as i64,
            spent_in: None,
        };
        b.put(
            sha_key("rt/", &refresh),
            serde_json::to_vec(&rec).map_err(internal)?,
        );
        let access = self
            .keys
            .issue(player_id, family, self.access_ttl_s)
            .map_err(internal)?;
        Ok(TokenPair {
            player_id: player_id.to_string(),
            access_token: access,
            refresh_token: refresh,
            token_type: "Bearer",
            expires_in: self.access_ttl_s,
        })
    }

    async fn login_account(&self, mut account: Account) -> Result<(Account, TokenPair), AuthError> {
        let (tokens, mut b) = self.new_login(&account.player_id)?;
        account.last_login = now_rfc3339();
        b.put(
            format!("acct/{}", account.player_id),
            serde_json::to_vec(&account).map_err(internal)?,
        );
        self.storage.commit(&b).await?;
        Ok((account, tokens))
    }

    /// Log in with a username or an email (an identifier with '@').
    pub async fn login(
        &self,
        identifier: &str,
        password: &str,
    ) -> Result<(Account, TokenPair), AuthError> {
        let account = if identifier.contains('@') {
            match names::normalize_email(identifier) {
                Ok(e) => self.lookup(format!("mail/{e}").as_bytes())?,
                Err(_) => None,
            }
        } else {
            match names::normalize_username(identifier) {
                Ok(u) => self.lookup(format!("user/{}", u.key).as_bytes())?,
                Err(_) => None,
            }
        };
        let phc = account
            .as_ref()
            .and_then(|a| a.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let pw = password.to_string();
        let ok = self.blocking(move || verify_password(&pw, &phc)).await?;
        match account {
            Some(a) if ok && a.password_hash.is_some() => self.login_account(a).await,
            _ => Err(AuthError::BadCredentials),
        }
    }

    /// Guest login by device id: the account is created on first use.
    pub async fn device(&self, device_id: &str) -> Result<(Account, TokenPair, bool), AuthError> {
        names::check_device_id(device_id).map_err(|m| invalid("device_id", m))?;
        let dev_key = sha_key("dev/", device_id);
        if let Some(a) = self.lookup_replicating(&dev_key).await? {
            let (a, t) = self.login_account(a).await?;
            return Ok((a, t, false));
        }
        let player_id = uuid::Uuid::now_v7().to_string();
        let username = format!("guest-{}", &player_id.replace('-', "")[20..]);
        let now = now_rfc3339();
        let account = Account {
            player_id: player_id.clone(),
            username: username.clone(),
            username_key: username.clone(),
            email: None,
            password_hash: None,
            auth_provider_id: "device".into(),
            devices: vec![hex::encode(Sha256::digest(device_id.as_bytes()))[..16].to_string()],
            home_region: self.region.clone(),
            created_at: now.clone(),
            last_login: now,
        };
        let mut b = Batch::new();
        b.require_absent(dev_key.clone())
            .put(dev_key.clone(), player_id.clone())
            .require_absent(format!("user/{username}"))
            .put(format!("user/{username}"), player_id.clone());
        match self.create_account_and_login(b, &account).await {
            Ok(t) => Ok((account, t, true)),
            // Two first logins of one device raced: the other one won.
            Err(AuthError::Store(StoreError::Conflict(_))) => {
                match self.lookup_replicating(&dev_key).await? {
                    Some(a) => {
                        let (a, t) = self.login_account(a).await?;
                        Ok((a, t, false))
                    }
                    // The device key vanished between the conflict and now
                    // (an erasure): a plain retry creates a new account.
                    None => Err(AuthError::Replicating(
                        "the device's account changed meanwhile; retry".into(),
                    )),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn family(&self, family: &str) -> Result<Option<Family>, AuthError> {
        match self.storage.get(format!("rtf/{family}").as_bytes())? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(internal)?)),
            None => Ok(None),
        }
    }

    async fn revoke_family(&self, family: &str) -> Result<(), AuthError> {
        if let Some(mut f) = self.family(family)? {
            f.revoked = true;
            let mut b = Batch::new();
            b.put(
                format!("rtf/{family}"),
                serde_json::to_vec(&f).map_err(internal)?,
            );
            self.storage.commit(&b).await?;
        }
        Ok(())
    }

    /// Rotate: spend `refresh_token`, issue a new pair in the same family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        if refresh_token.len() > 256 {
            return Err(AuthError::BadRefresh);
        }
        let key = sha_key("rt/", refresh_token);
        let Some(raw) = self.storage.get(&key)? else {
            return Err(AuthError::BadRefresh);
        };
        let mut rec: RefreshRecord = serde_json::from_slice(&raw).map_err(internal)?;
        let fam = self.family(&rec.family)?.ok_or(AuthError::BadRefresh)?;
        if fam.revoked {
            return Err(AuthError::BadRefresh);
        }
        if rec.spent {
            tracing::warn!(player_id = %rec.player_id, family = %rec.family, "refresh token reuse: revoking login");
            self.revoke_family(&rec.family).await?;
            return Err(AuthError::RefreshReused);
        }
        if rec.expires_at < chrono::Utc::now().timestamp() {
            return Err(AuthError::BadRefresh);
        }
        rec.spent = true;
        rec.spent_in = Some(self.region.clone());
        let mut b = Batch::new();
        // Only one concurrent refresh of this token can win; the loser is a reuse.
        b.require_value(key.clone(), Some(raw))
            .put(key, serde_json::to_vec(&rec).map_err(internal)?);
        let pair = self.next_token(&rec.player_id, &rec.family, &mut b)?;
        match self.storage.commit(&b).await {
            Ok(()) => Ok(pair),
            Err(StoreError::Conflict(_)) => {
                self.revoke_family(&rec.family).await?;
                Err(AuthError::RefreshReused)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Revoke the login that `refresh_token` belongs to.
    pub async fn logout(&self, player_id: &str, refresh_token: &str) -> Result<(), AuthError> {
        let key = sha_key("rt/", refresh_token);
        let Some(raw) = self.storage.get(&key)? else {
            return Err(AuthError::BadRefresh);
        };
        let rec: RefreshRecord = serde_json::from_slice(&raw).map_err(internal)?;
        if rec.player_id != player_id {
            return Err(AuthError::NotYours);
        }
        self.revoke_family(&rec.family).await
    }

    /// Whether the login (refresh family) behind an access token is revoked.
    pub fn login_revoked(&self, family: &str) -> bool {
        matches!(self.family(family), Ok(Some(f)) if f.revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn accounts(dir: &std::path::Path) -> (Accounts, Storage) {
        let storage = Storage::open_sled(dir).unwrap();
        let keys = Arc::new(Keyring::open(&storage, "eu-west").await.unwrap());
        let a = Accounts::new(storage.clone(), keys, "eu-west", 900, 3600, 2).unwrap();
        (a, storage)
    }

    /// The same device's first login in another region won the `dev/` key,
    /// which replicated here before that region's `acct/` record.
    #[tokio::test]
    async fn device_key_ahead_of_its_account_waits_for_it_then_logs_in() {
        let dir = tempfile::tempdir().unwrap();
        let (a, storage) = accounts(dir.path()).await;
        let remote = Account {
            player_id: "01900000-0000-7000-8000-000000000001".into(),
            username: "guest-remote".into(),
            username_key: "guest-remote".into(),
            email: None,
            password_hash: None,
            auth_provider_id: "device".into(),
            devices: vec![],
            home_region: "ap-south".into(),
            created_at: now_rfc3339(),
            last_login: now_rfc3339(),
        };
        let mut b = Batch::new();
        b.put(sha_key("dev/", "phone-0001"), remote.player_id.clone());
        storage.commit(&b).await.unwrap();
        let late = storage.clone();
        let record = serde_json::to_vec(&remote).unwrap();
        let id = remote.player_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut b = Batch::new();
            b.put(format!("acct/{id}"), record);
            late.commit(&b).await.unwrap();
        });
        let (acct, _, created) = a.device("phone-0001").await.unwrap();
        assert_eq!(acct.player_id, remote.player_id);
        assert!(!created);
    }

    #[tokio::test]
    async fn device_key_whose_account_never_arrives_is_a_retryable_503_not_a_500() {
        let dir = tempfile::tempdir().unwrap();
        let (a, storage) = accounts(dir.path()).await;
        let mut b = Batch::new();
        b.put(
            sha_key("dev/", "phone-0002"),
            "01900000-0000-7000-8000-00000000dead",
        );
        storage.commit(&b).await.unwrap();
        let started = tokio::time::Instant::now();
        match a.device("phone-0002").await {
            Err(AuthError::Replicating(m)) => assert!(m.contains("retry"), "{m}"),
            other => panic!(
                "expected Replicating, got {:?}",
                other.map(|r| r.0.player_id)
            ),
        }
        assert!(started.elapsed() >= REPLICATING_WAIT);
    }
}
