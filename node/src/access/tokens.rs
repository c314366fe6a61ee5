//! Grant tokens: biscuits signed with the vault's signing key.
//!
//! The authority block names the grant and the vault and checks the grant's expiry.
//! A grant records the revocation id of the authority block it was issued with
//! (`token_id`): only tokens that descend from that block are accepted for it, so a
//! device that holds the signing key but not the token (a removed device, say) cannot
//! mint one. A service narrows its token offline by appending a block whose context
//! carries a [`Narrowing`] (and, optionally, an earlier expiry as a Datalog check);
//! appended blocks can only take away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
        block = block.check_expiration_date(crate::clock::now() + expires);
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

/// Verified tokens, bounded (moka's W-TinyLFU cache): a flood of tokens used once (a
/// service can mint any number offline) is mostly not admitted, so it cannot push out
/// the tokens in steady use, and a miss only costs a check. Keyed by a hash of the
/// token, so no token is kept as a key.
pub(crate) struct TokenCache(moka::sync::Cache<[u8; 32], Arc<Verified>>);

const MAX_CACHED: u64 = 4096;

/// Appended blocks a token may carry: each costs a signature check before the token
/// is known to be the vault's, and honest narrowing appends one at a time.
const MAX_BLOCKS: usize = 16;

impl Default for TokenCache {
    fn default() -> Self {
        Self(moka::sync::Cache::new(MAX_CACHED))
    }
}

impl TokenCache {
    fn key(token: &str) -> [u8; 32] {
        *blake3::hash(token.as_bytes()).as_bytes()
    }

    /// The token, if it was verified before.
    pub fn cached(&self, token: &str) -> Option<Arc<Verified>> {
        self.0.get(&Self::key(token))
    }

    pub fn insert(&self, token: &str, verified: Arc<Verified>) {
        self.0.insert(Self::key(token), verified);
    }
}

/// The binding a token claims (the hex revocation id of its authority block), read
/// without checking any signature: cheap, and it proves nothing. It tells which grant
/// to charge before the token is verified; only a holder of that grant's token (or of
/// one narrowed from it) knows the value.
pub(crate) fn claimed_binding(token: &str) -> Result<String, AccessError> {
    let unverified = UnverifiedBiscuit::from_base64(token).map_err(|_| invalid())?;
    if unverified.block_count() > MAX_BLOCKS + 1 {
        return Err(AccessError::InvalidToken(format!(
            "the token carries more than {MAX_BLOCKS} appended blocks"
        )));
    }
    let ids = unverified.revocation_identifiers();
    ids.first()
        .map(|id| HEXLOWER.encode(id))
        .ok_or_else(invalid)
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

/// Refuses, before any Datalog runs, a token with an appended block that is not of
/// the one shape Hearth appends ([`attenuate`]): a narrowing in its context, and at
/// most one expiry check. A holder may append blocks (that is how it narrows its
/// token), and biscuit checks its run limits only between rounds of evaluation, so a
/// single appended rule joining a few predicates could keep a thread busy for minutes.
fn only_narrowings_appended(biscuit: &Biscuit) -> Result<(), AccessError> {
    for index in 1..biscuit.block_count() {
        let source = biscuit.print_block_source(index).map_err(|_| invalid())?;
        let expiry = source
            .strip_prefix("check if time($time), $time <= ")
            .and_then(|rest| rest.strip_suffix(";\n"))
            .is_some_and(|date| {
                !date.is_empty()
                    && date
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b"-:.+TZ".contains(&b))
            });
        if !(source.is_empty() || expiry) {
            return Err(AccessError::InvalidToken(
                "the token carries appended facts, rules or checks: only narrowings and an expiry date may be appended".into(),
            ));
        }
    }
    Ok(())
}

fn invalid() -> AccessError {
    AccessError::InvalidToken("the token is not valid for this vault".into())
}

/// Verifies a token's signature chain against the vault's key and reads its grant,
/// vault, binding and narrowings.
pub(crate) fn verify(keys: &VaultKeys, token: &str) -> Result<Verified, AccessError> {
    let biscuit = Biscuit::from_base64(token, root_key(keys).public()).map_err(|_| invalid())?;
    only_narrowings_appended(&biscuit)?;
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hearth_protocol::scope::Narrowing;

    use super::*;
    use crate::testutil::TestVault;

    fn appended(token: &str, block: BlockBuilder) -> String {
        UnverifiedBiscuit::from_base64(token)
            .unwrap()
            .append(block)
            .unwrap()
            .to_base64()
            .unwrap()
    }

    /// A holder appends blocks to narrow its token; one that appends anything else
    /// (here a rule joining five predicates over 40 facts: 10⁸ combinations, minutes of
    /// work) is refused at once, before any of it runs.
    #[test]
    fn a_token_with_appended_rules_is_refused_before_they_run() {
        let vault = TestVault::new();
        let (token, _) = mint(&vault.keys, "g1", None).unwrap();
        let narrowing = Narrowing::parse(Some("contacts.name"), None).unwrap();
        // What Hearth appends passes: a narrowing, with and without an expiry.
        for expires in [None, Some(Duration::from_secs(3600))] {
            let narrowed = attenuate(&token, &narrowing, expires).unwrap();
            let verified = verify(&vault.keys, &narrowed).unwrap();
            assert_eq!(verified.narrowings.len(), 1);
            verified.check_time(now()).unwrap();
        }
        let mut costly = BlockBuilder::new().context(narrowing.encode());
        for i in 0..40 {
            costly = costly.fact(format!("n({i})").as_str()).unwrap();
        }
        let costly = costly
            .rule("p($a, $b, $c, $d, $e) <- n($a), n($b), n($c), n($d), n($e)")
            .unwrap();
        let extra_fact = BlockBuilder::new()
            .context(narrowing.encode())
            .fact("grant(\"g2\")")
            .unwrap();
        let extra_check = BlockBuilder::new()
            .context(narrowing.encode())
            .check("check if n($a), n($b), n($c), n($d), $a + $b + $c + $d == 1000")
            .unwrap();
        for block in [costly, extra_fact, extra_check] {
            let started = Instant::now();
            let refused = verify(&vault.keys, &appended(&token, block)).err().unwrap();
            assert!(
                matches!(&refused, AccessError::InvalidToken(m) if m.contains("appended")),
                "{refused}"
            );
            assert!(started.elapsed() < Duration::from_secs(1));
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}
