//! Grant tokens: biscuits signed with the signing key of the vault's current epoch
//! (`hearth_core::epochs`): the vault's first signing key in epoch 0 (no root key id),
//! after that a key derived from the epoch key, named by the token's root key id. A
//! token verifies against the epoch it names, on every device: the epochs' public keys
//! are in `_epochs`.
//!
//! The authority block names the grant and the vault. Tokens of grants made before
//! `hearth extend` also check the grant's expiry as it was then; newer ones carry no
//! date, the grant's expiry (checked at every request) being theirs, so extending a
//! grant keeps its token.
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
    AuthorizerBuilder, AuthorizerLimits, Biscuit, KeyPair, PrivateKey, PublicKey, UnverifiedBiscuit,
};
use data_encoding::HEXLOWER;
use hearth_protocol::scope::Narrowing;

use super::AccessError;
use crate::keys::VaultKeys;

fn key_pair(seed: &[u8; 32]) -> KeyPair {
    let private = PrivateKey::from_bytes(seed, Algorithm::Ed25519)
        .expect("a 32-byte seed is a valid Ed25519 private key");
    KeyPair::from(&private)
}

/// The public key a token's root key id names: the vault's first key for none, else
/// the epoch's.
fn root_public(
    keys: &VaultKeys,
    key_id: Option<u32>,
) -> Result<PublicKey, biscuit_auth::error::Format> {
    match key_id {
        None => Ok(key_pair(keys.signing_seed()).public()),
        Some(id) => keys
            .epochs
            .verifying_key(id)
            .ok_or(biscuit_auth::error::Format::UnknownPublicKey)
            .and_then(|public| PublicKey::from_bytes(&public, Algorithm::Ed25519)),
    }
}

/// A new token for grant `grant_id`, and its binding (the hex revocation id of its
/// authority block) to record in the grant.
pub(crate) fn mint(
    keys: &VaultKeys,
    grant_id: &str,
    expires_at: Option<u64>,
) -> Result<(String, String), AccessError> {
    let signer = keys
        .epochs
        .signer()
        .map_err(|e| AccessError::Conflict(e.to_string()))?;
    let mut builder = Biscuit::builder()
        .fact(format!("grant({grant_id:?})").as_str())
        .and_then(|b| b.fact(format!("vault({:?})", keys.vault_id_hex()).as_str()))
        .map_err(|e| AccessError::Token(e.to_string()))?;
    if let Some(expires_at) = expires_at {
        builder = builder.check_expiration_date(UNIX_EPOCH + Duration::from_secs(expires_at));
    }
    let root = match &signer {
        None => key_pair(keys.signing_seed()),
        Some(signer) => {
            builder = builder.root_key_id(signer.key_id);
            key_pair(&signer.seed)
        }
    };
    let token = builder
        .build(&root)
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
    let biscuit =
        Biscuit::from_base64(token, |key_id| root_public(keys, key_id)).map_err(|_| invalid())?;
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

    /// After a rotation, new tokens are signed with the epoch's key and name it, and
    /// tokens of epoch 0 still verify. A removed device, which holds the vault's first
    /// keys only, cannot verify a new token with them, cannot sign under the epoch even
    /// when it sees the epoch's record, and a token it signs claiming the epoch is
    /// refused.
    #[test]
    fn tokens_follow_the_epoch_and_a_removed_device_cannot_sign_under_it() {
        use hearth_core::epochs::{self, Member, View};
        use rand::RngCore;
        use zeroize::Zeroizing;

        let vault = TestVault::new();
        let (old_token, _) = mint(&vault.keys, "g0", None).unwrap();
        assert_eq!(verify(&vault.keys, &old_token).unwrap().grant_id, "g0");

        let x_dir = tempfile::tempdir().unwrap();
        let x_home = crate::home::Home::new(x_dir.path().join("x"));
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *secret);
        let x = crate::keys::init_joined(&x_home, None, vault.keys.shared_secrets(), secret)
            .unwrap()
            .keys;
        // Both hold epoch 0: x's tokens verify here until the vault rotates.
        let (x_old, _) = mint(&x, "g0", None).unwrap();
        verify(&vault.keys, &x_old).unwrap();

        let me = vault.keys.identity();
        let mut view = View {
            epochs: Vec::new(),
            members: vec![Member {
                peer: vault.keys.peer_id(),
                exchange: Some(vault.keys.exchange_public()),
            }],
            removed: vec![x.peer_id()],
            kit: None,
            replaced_kits: Vec::new(),
        };
        let writes = epochs::plan(&view, &me, epochs::Rotation::IfNeeded, now());
        epochs::apply(&mut view, &writes);
        vault.keys.epochs.refresh(&view, &me);
        let epoch = view.current(&vault.keys.vault_id).unwrap().clone();

        let (new_token, _) = mint(&vault.keys, "g1", None).unwrap();
        let parsed = Biscuit::from_base64(&new_token, |id| root_public(&vault.keys, id)).unwrap();
        assert_eq!(
            parsed.root_key_id(),
            Some(epochs::key_id(&epoch.signing_key))
        );
        assert_eq!(verify(&vault.keys, &new_token).unwrap().grant_id, "g1");
        assert_eq!(verify(&vault.keys, &old_token).unwrap().grant_id, "g0");

        // The device that made the epoch is removed later: its epoch no longer counts
        // as current, and the tokens signed in it still verify.
        let mut maker_removed = view.clone();
        maker_removed.members.clear();
        maker_removed.removed.push(vault.keys.peer_id());
        vault.keys.epochs.refresh(&maker_removed, &me);
        assert_eq!(verify(&vault.keys, &new_token).unwrap().grant_id, "g1");
        vault.keys.epochs.refresh(&view, &me);

        // x's own keys do not verify the new token.
        assert!(verify(&x, &new_token).is_err());
        // x sees the epoch's record (it is not secret) and still cannot sign under it.
        x.epochs.refresh(&view, &x.identity());
        assert!(x.epochs.signer().is_err());
        assert!(matches!(
            mint(&x, "g2", None),
            Err(AccessError::Conflict(m)) if m.contains("has not received")
        ));
        // A token x signs with the only key it holds, claiming the epoch: refused.
        let forged = Biscuit::builder()
            .fact("grant(\"g1\")")
            .and_then(|b| b.fact(format!("vault({:?})", vault.keys.vault_id_hex()).as_str()))
            .unwrap()
            .root_key_id(epochs::key_id(&epoch.signing_key))
            .build(&key_pair(x.signing_seed()))
            .unwrap()
            .to_base64()
            .unwrap();
        assert!(matches!(
            verify(&vault.keys, &forged),
            Err(AccessError::InvalidToken(_))
        ));
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}
