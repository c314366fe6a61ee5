//! Views per second, and what the audit log costs: the same single-record read as the
//! owner (no grant check, no audit entry) and as a service through a grant (token
//! check, projection, an audit entry appended and committed), in the same run.
//!
//!     cargo run --release -p hearth-tests --example view_load [-- REQUESTS]

use std::time::Instant;

use hearth_node::access::{self, NewGrant};
use hearth_node::{Node, NodeConfig};
use hearth_protocol::scope::Scope;
use hearth_protocol::{CollectionName, RecordId};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2000);
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new(dir.path().join("v"));
    config.api_addr = "127.0.0.1:0".parse()?;
    config.mesh = None;
    let node = Node::start(config).await?;
    let v = node.vault();
    let contacts = CollectionName::parse("contacts")?;
    for i in 0..1000 {
        let record = json!({"name": format!("P{i}"), "email": format!("p{i}@x"), "tag": if i % 2 == 0 { "work" } else { "home" }});
        v.collections.put(
            &contacts,
            &RecordId::parse(&format!("r{i}"))?,
            record.as_object().unwrap(),
        )?;
    }
    let scope = Scope::parse(Some("contacts.name,contacts.email"), None, &[])?;
    let (_, token) = access::create_grant(&v.collections, &v.keys, NewGrant::new("bench", scope))?;
    v.store.commit().await?;
    let owner = std::fs::read_to_string(dir.path().join("v/owner.token"))?
        .trim()
        .to_owned();
    let base = format!("http://{}", node.api_addr());
    let http = reqwest::Client::builder().no_proxy().build()?;

    for concurrency in [1usize, 8] {
        let mut rates = Vec::new();
        for (label, path, bearer) in [
            (
                "owner record read",
                "/v1/collections/contacts/records",
                owner.as_str(),
            ),
            ("service view read", "/v1/view/contacts", token.as_str()),
        ] {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..concurrency {
                let (http, base, bearer) = (http.clone(), base.clone(), bearer.to_owned());
                tasks.push(tokio::spawn(async move {
                    for i in (w..requests).step_by(concurrency) {
                        let r = http
                            .get(format!("{base}{path}/r{}", i % 1000))
                            .bearer_auth(&bearer)
                            .send()
                            .await?;
                        anyhow::ensure!(r.status().is_success(), "{}", r.status());
                    }
                    Ok::<_, anyhow::Error>(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            let per_sec = requests as f64 / start.elapsed().as_secs_f64();
            println!("{concurrency} clients, {label}: {per_sec:.0} requests/s");
            rates.push(per_sec);
        }
        println!(
            "{concurrency} clients: a view read (token check + audit entry) costs {:.2}x an owner read",
            rates[0] / rates[1]
        );
    }
    let entries = access::audit_entries(&v.collections, None)?.len();
    println!(
        "audit entries written: {entries}; chain verifies: {:?}",
        access::verify_audit(&v.collections).map_err(|e| e.1)
    );
    node.shutdown().await?;
    Ok(())
}
