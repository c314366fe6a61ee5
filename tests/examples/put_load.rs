//! Put latency and throughput through the local API, against a baseline measured in
//! the same run: one small write plus fsync on the same disk.
//!
//!     cargo run --release -p hearth-tests --example put_load [-- RECORDS_PER_RUN]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hearth_node::{Node, NodeConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let per_run: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2000);
    let dir = tempfile::tempdir()?;

    // Baseline: what one durable write costs on this disk.
    let fsync = {
        use std::io::Write;
        let path = dir.path().join("baseline");
        let mut file = std::fs::File::create(&path)?;
        let n = 200;
        let start = Instant::now();
        for i in 0..n {
            file.write_all(format!("{i:064}").as_bytes())?;
            file.sync_data()?;
        }
        start.elapsed() / n
    };
    println!("baseline: write+fsync of 64 bytes: {fsync:?}");

    let mut config = NodeConfig::new(dir.path().join("vault"));
    config.api_addr = "127.0.0.1:0".parse()?;
    let node = Node::start(config).await?;
    let base = format!("http://{}", node.api_addr());
    let token = std::fs::read_to_string(dir.path().join("vault/owner.token"))?
        .trim()
        .to_owned();
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()?;
    let stats = || {
        let s = node.vault().store.stats();
        (
            s.commits.load(Ordering::Relaxed),
            s.flushes.load(Ordering::Relaxed),
        )
    };

    for writers in [1usize, 8, 64] {
        let (c0, f0) = stats();
        let start = Instant::now();
        let mut tasks = Vec::new();
        let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(per_run)));
        for w in 0..writers {
            let (http, base, token, latencies) =
                (http.clone(), base.clone(), token.clone(), latencies.clone());
            tasks.push(tokio::spawn(async move {
                for i in (w..per_run).step_by(writers) {
                    let body = serde_json::json!({"name": format!("person {i}"), "email": format!("p{i}@example.org"), "n": i});
                    let t = Instant::now();
                    let response = http
                        .put(format!("{base}/v1/collections/load{writers}/records/r{i}"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await?;
                    anyhow::ensure!(response.status().is_success(), "put failed: {}", response.status());
                    latencies.lock().unwrap().push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let elapsed = start.elapsed();
        let (c1, f1) = stats();
        let mut l = latencies.lock().unwrap().clone();
        l.sort();
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
        println!(
            "{writers:>3} writers: {per_run} puts in {elapsed:.2?} = {:.0} puts/s; latency p50 {:?} p99 {:?}; \
             {} commits shared {} fsyncs ({:.1} per fsync); p50 / fsync baseline = {:.2}",
            per_run as f64 / elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            c1 - c0,
            f1 - f0,
            (c1 - c0) as f64 / (f1 - f0).max(1) as f64,
            pct(0.5).as_secs_f64()
                / fsync
                    .as_secs_f64()
                    .max(Duration::from_nanos(1).as_secs_f64()),
        );
    }
    node.shutdown().await?;
    Ok(())
}
