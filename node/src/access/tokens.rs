//! Grant tokens: biscuits signed with the vault's signing key.
//!
//! The authority block names the grant and the vault and checks the grant's expiry.
//! A grant records the revocation id of the authority block it was issued with
//! (`token_id`): only tokens that descend from that block are accepted for it, so a
//! device that holds the signing key but not the token (a removed device, say) cannot
//! mint one. A service narrows its token offline by appending a block whose context
//! carries a [`Narrowing`] (and, optionally, an earlier expiry as a Datalog check);
//! appended blocks can only take away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{Algorithm, BlockBuilder, date, fact};
use biscuit_auth::builder_ext::BuilderExt;
use biscuit_auth::{
    AuthorizerBuilder, AuthorizerLimits, Biscuit, KeyPair, PrivateKey, UnverifiedBiscuit,
};
use data_encoding::HEXLOWER;
use hearth_protocol::scope::Narrowing;

use super::AccessError;
use crate::keys::VaultKeys;

fn root_key(keys: &VaultKeys) -> KeyPair {
    let private = PrivateKey::from_bytes(keys.signing_seed(), Algorithm::Ed25519)
        .expect("a 32-byte seed is a valid Ed25519 private key");
    KeyPair::from(&private)
}

/// A new token for grant `grant_id`, and its binding (the hex revocation id of its
/// authority block) to record in the grant.
pub(crate) fn mint(
    keys: &VaultKeys,
    grant_id: &str,
    expires_at: Option<u64>,
) -> Result<(String, String), AccessError> {
    let mut builder = Biscuit::builder()
        .fact(format!("grant({grant_id:?})").as_str())
        .and_then(|b| b.fact(format!("vault({:?})", keys.vault_id_hex()).as_str()))
        .map_err(|e| AccessError::Token(e.to_string()))?;
    if let Some(expires_at) = expires_at {
        builder = builder.check_expiration_date(UNIX_EPOCH + Duration::from_secs(expires_at));
    }
    let token = builder
        .build(&root_key(keys))
        .map_err(|e| AccessError::Token(e.to_string()))?;
    let binding = binding_of(&token);
    let text = token
        .to_base64()
        .map_err(|e| AccessError::Token(e.to_string()))?;
    Ok((text, binding))
}

fn binding_of(token: &Biscuit) -> String {
    let ids = token.revocation_identifiers();
    HEXLOWER.encode(ids.first().expect("every token has an authority block"))
}

/// Narrows a token offline (a service can do it without the vault): the new token
/// allows at most `narrowing`, and only until `expires` if given.
pub fn attenuate(
    token: &str,
    narrowing: &Narrowing,
    expires: Option<Duration>,
) -> Result<String, AccessError> {
    let mut block = BlockBuilder::new().context(narrowing.encode());
    if let Some(expires) = expires {
        block = block.check_expiration_date(SystemTime::now() + expires);
    }
    UnverifiedBiscuit::from_base64(token.trim())
        .map_err(|_| AccessError::BadRequest("that is not a Hearth token".into()))?
        .append(block)
        .and_then(|t| t.to_base64())
        .map_err(|e| AccessError::Token(e.to_string()))
}

/// A token whose signatures, vault and narrowings were checked.
pub(crate) struct Verified {
    pub grant_id: String,
    /// The revocation id of its authority block, hex: must equal the grant's.
    pub binding: String,
    /// One per appended block, oldest first.
    pub narrowings: Vec<Narrowing>,
    token: Biscuit,
    /// The second (Unix time) in which the token's time checks last passed.
    time_checked: AtomicU64,
}

impl Verified {
    /// Runs the token's own checks (its expiry dates) at `now`, at most once a second.
    pub fn check_time(&self, now: u64) -> Result<(), AccessError> {
        if self.time_checked.load(Ordering::Relaxed) == now {
            return Ok(());
        }
        let passes_at = |time: SystemTime| {
            authorizer()
                .fact(fact("time", &[date(&time)]))
                .and_then(|b| b.policy("allow if true"))
                .and_then(|b| b.build(&self.token))
                .and_then(|mut a| a.authorize())
                .is_ok()
        };
        if !passes_at(UNIX_EPOCH + Duration::from_secs(now)) {
            // Time checks are the only checks Hearth writes: a token that passes at the
            // dawn of time but not now has expired; anything else carries checks this
            // vault does not understand.
            return Err(if passes_at(UNIX_EPOCH) {
                AccessError::Expired
            } else {
                AccessError::InvalidToken(
                    "the token carries checks this vault cannot satisfy".into(),
                )
            });
        }
        self.time_checked.store(now, Ordering::Relaxed);
        Ok(())
    }
}

/// Verified tokens, bounded: when full it starts over (a miss only costs a check).
/// Keyed by a hash of the token, so no token is kept as a key.
#[derive(Default)]
pub(crate) struct TokenCache(Mutex<HashMap<[u8; 32], Arc<Verified>>>);

const MAX_CACHED: usize = 4096;

impl TokenCache {
    pub fn get_or_verify(
        &self,
        keys: &VaultKeys,
        token: &str,
    ) -> Result<Arc<Verified>, AccessError> {
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        if let Some(v) = self
            .0
            .lock()
            .expect("token cache lock is never poisoned")
            .get(&key)
        {
            return Ok(v.clone());
        }
        let verified = Arc::new(verify(keys, token)?);
        let mut cache = self.0.lock().expect("token cache lock is never poisoned");
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, verified.clone());
        Ok(verified)
    }
}

/// The wall time a token's Datalog may take. biscuit-auth's default is 1 ms, which
/// an honest token exceeded on a busy node (a thread preempted mid-check is enough):
/// it was then refused as "not valid for this vault", or its time checks as expired.
/// The limits that bound the work itself (facts, iterations) stay at their defaults.
const CHECK_TIME: Duration = Duration::from_millis(100);

/// An authorizer with Hearth's limits.
fn authorizer() -> AuthorizerBuilder {
    AuthorizerBuilder::new().set_limits(AuthorizerLimits {
        max_time: CHECK_TIME,
        ..AuthorizerLimits::default()
    })
}

fn invalid() -> AccessError {
    AccessError::InvalidToken("the token is not valid for this vault".into())
}

/// Verifies a token's signature chain against the vault's key and reads its grant,
/// vault, binding and narrowings.
fn verify(keys: &VaultKeys, token: &str) -> Result<Verified, AccessError> {
    let biscuit = Biscuit::from_base64(token, root_key(keys).public()).map_err(|_| invalid())?;
    let mut authorizer = authorizer()
        .policy("allow if true")
        .and_then(|b| b.build(&biscuit))
        .map_err(|_| invalid())?;
    // Queries see only the authority block's facts: an appended block cannot add a grant.
    let ids: Vec<(String,)> = authorizer
        .query("data($id) <- grant($id)")
        .map_err(|_| invalid())?;
    let vaults: Vec<(String,)> = authorizer
        .query("data($v) <- vault($v)")
        .map_err(|_| invalid())?;
    let ([(id,)], [(vault,)]) = (ids.as_slice(), vaults.as_slice()) else {
        return Err(invalid());
    };
    if *vault != keys.vault_id_hex() {
        return Err(invalid());
    }
    let mut narrowings = Vec::new();
    for context in biscuit.context().into_iter().skip(1) {
        let narrowing = context
            .as_deref()
            .map(Narrowing::decode)
            .unwrap_or_else(|| {
                Err(hearth_protocol::scope::ScopeError::Narrowing(
                    "an appended block carries no narrowing".into(),
                ))
            })
            .map_err(|e| AccessError::InvalidToken(e.to_string()))?;
        narrowings.push(narrowing);
    }
    Ok(Verified {
        grant_id: id.clone(),
        binding: binding_of(&biscuit),
        narrowings,
        token: biscuit,
        time_checked: AtomicU64::new(0),
    })
}
