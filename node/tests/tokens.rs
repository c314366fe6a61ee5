//! A service can mint tokens offline (narrowing its own): each token the node has not
//! seen costs a verification. The grant's rate is charged before that verification, so
//! a flood of fresh tokens is held up by the service's own rate, not paid for by the
//! node.

use biscuit_auth::UnverifiedBiscuit;
use biscuit_auth::builder::BlockBuilder;
use hearth_node::access::{self, AccessError, Credentials, NewGrant};
use hearth_node::{Node, NodeConfig};
use hearth_protocol::scope::{Narrowing, Scope};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_tokens_are_charged_to_the_grant_before_they_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path().join("v"));
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.mesh = None;
    let node = Node::start(config).await.unwrap();
    let v = node.vault().clone();
    let scope = Scope::parse(Some("notes"), None, &[]).unwrap();
    let mut new = NewGrant::new("minter", scope);
    new.rate_per_minute = Some(3);
    let (_, token) = access::create_grant(v.collections(), v.keys(), new).unwrap();
    let token = token.token;
    v.store().commit().await.unwrap();

    // Three fresh narrowings: each is verified and charged once.
    let narrowing = Narrowing::parse(Some("notes"), None).unwrap();
    for i in 0..3 {
        let fresh = access::attenuate(&token, &narrowing, None).unwrap();
        let admitted = v.door().admit(&Credentials::local(&fresh)).await;
        assert!(admitted.is_ok(), "fresh token {i}: {:?}", admitted.err());
    }
    // The rate is spent. A token this vault would refuse only once its blocks are
    // read (an appended rule) is refused for the rate first: it never reached the
    // verification that would have cost the node the work.
    let crafted = UnverifiedBiscuit::from_base64(&token)
        .unwrap()
        .append(BlockBuilder::new().rule("p($a) <- q($a)").unwrap())
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(matches!(
        v.door().admit(&Credentials::local(&crafted)).await,
        Err(AccessError::RateLimited(3))
    ));
    // Another fresh, valid token: refused for the rate as well.
    let fresh = access::attenuate(&token, &narrowing, None).unwrap();
    assert!(matches!(
        v.door().admit(&Credentials::local(&fresh)).await,
        Err(AccessError::RateLimited(3))
    ));
    node.shutdown().await.unwrap();
}
