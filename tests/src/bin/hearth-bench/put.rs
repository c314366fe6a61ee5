//! Durable puts through the API against sled's own insert + flush, and at-rest sealing
//! against memcpy.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hearth_protocol::seal::{Binding, SealKey};
use serde_json::json;

use crate::Opts;
use crate::nodes::{http_client, http_load, owner_token, start};
use crate::report::{Report, fig, percentile_ms};

/// The baseline of a durable write: `count` sled inserts of `bytes`, each flushed, on
/// the disk under `dir`; the latencies sorted.
pub async fn sled_flush_latencies(
    dir: &std::path::Path,
    bytes: Vec<u8>,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let baseline_dir = tempfile::tempdir_in(dir)?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Duration>> {
        let db = sled::open(baseline_dir.path().join("sled"))?;
        let tree = db.open_tree("bench")?;
        for i in 0..100 {
            tree.insert(format!("w{i}"), bytes.as_slice())?;
            db.flush()?;
        }
        let mut latencies = Vec::with_capacity(count);
        for i in 0..count {
            let t = Instant::now();
            tree.insert(format!("r{i}"), bytes.as_slice())?;
            db.flush()?;
            latencies.push(t.elapsed());
        }
        latencies.sort();
        Ok(latencies)
    })
    .await?
}

pub async fn durable_put(opts: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "durable put",
        "1 client p50 <= 2x raw sled insert+flush; >= 5,000 acknowledged puts/s at 32 clients",
    );
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let node = start(&dir.path().join("vault"), false, vec![]).await?;
    let base = format!("http://{}", node.api_addr());
    let token = owner_token(&node)?;
    let http = http_client()?;
    let body = serde_json::to_vec(&json!({
        "name": "Person", "email": "person@example.org", "phone": "+33 6 12 34 56 78",
        "notes": "x".repeat(120),
    }))?;
    let put = {
        let (http, base, token, body) = (http.clone(), base.clone(), token.clone(), body.clone());
        move |i: usize| {
            http.put(format!("{base}/v1/collections/bench/records/r{i}"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.clone())
        }
    };
    let sequential = if opts.quick { 1_000 } else { 5_000 };
    // Warm up connections, the collection and the allocator.
    for i in 0..100 {
        put(1_000_000 + i).send().await?.error_for_status()?;
    }
    let mut latencies = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let t = Instant::now();
        put(i).send().await?.error_for_status()?;
        latencies.push(t.elapsed());
    }
    latencies.sort();

    // The same writes without HTTP: where the time goes.
    let direct = {
        let v = node.vault();
        let bench = hearth_protocol::CollectionName::parse("direct")?;
        let record: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)?;
        let mut latencies = Vec::with_capacity(sequential);
        for i in 0..sequential {
            let t = Instant::now();
            v.collections().put(
                &bench,
                &hearth_protocol::RecordId::parse(&format!("r{i}"))?,
                &record,
            )?;
            let stored = t.elapsed();
            v.store().commit().await?;
            latencies.push((stored, t.elapsed()));
        }
        latencies
    };
    let mut stored: Vec<Duration> = direct.iter().map(|d| d.0).collect();
    let mut committed: Vec<Duration> = direct.iter().map(|d| d.1).collect();
    stored.sort();
    committed.sort();

    let baseline = sled_flush_latencies(&opts.dir, body.clone(), sequential).await?;

    let load = http_load(32, opts.duration(), move |i| put(2_000_000 + i)).await?;
    let stats = node.vault().store().stats();
    let (commits, fsyncs) = (
        stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        stats.flushes.load(std::sync::atomic::Ordering::Relaxed),
    );
    node.shutdown().await?;

    let (p50, p99) = (percentile_ms(&latencies, 50), percentile_ms(&latencies, 99));
    let (b50, b99) = (percentile_ms(&baseline, 50), percentile_ms(&baseline, 99));
    report.figures = vec![
        fig("1 client: put p50", p50, "ms"),
        fig("1 client: put p99", p99, "ms"),
        fig(
            "in-process put (no HTTP, before commit) p50",
            percentile_ms(&stored, 50),
            "ms",
        ),
        fig(
            "in-process put + commit (no HTTP) p50",
            percentile_ms(&committed, 50),
            "ms",
        ),
        fig("32 clients: acknowledged puts/s", load.per_second, "puts/s"),
        fig(
            "32 clients: put p50",
            percentile_ms(&load.latencies, 50),
            "ms",
        ),
        fig(
            "32 clients: put p99",
            percentile_ms(&load.latencies, 99),
            "ms",
        ),
    ];
    report.baseline = vec![
        fig("sled insert+flush p50", b50, "ms"),
        fig("sled insert+flush p99", b99, "ms"),
    ];
    report.ratio = Some(("1 client p50 / sled p50".into(), p50 / b50));
    report.notes.push(format!(
        "{sequential} sequential puts, then 32 clients for {:?}; {} commits, {} fsyncs in the node",
        opts.duration(),
        commits,
        fsyncs
    ));
    report.judge(&[p50 / b50 <= 2.0, load.per_second >= 5_000.0]);
    Ok(report)
}

pub async fn sealing(opts: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new("sealing", "report the ratio to memcpy");
    let total: usize = if opts.quick { 256 << 20 } else { 1 << 30 };
    let value: Vec<u8> = (0..64 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let rounds = total / value.len();
    let (seal, open, copy) = tokio::task::spawn_blocking(move || {
        let key = SealKey::from_bytes(rand::random());
        let binding = Binding::new(b"bench", b"value");
        let t = Instant::now();
        let mut sealed = Vec::new();
        for _ in 0..rounds {
            sealed = black_box(key.seal(binding, black_box(&value), rand::random()));
        }
        let seal = t.elapsed();
        let t = Instant::now();
        for _ in 0..rounds {
            black_box(
                key.open(binding, black_box(&sealed))
                    .expect("opens what it sealed"),
            );
        }
        let open = t.elapsed();
        let t = Instant::now();
        for _ in 0..rounds {
            black_box(black_box(&value).to_vec());
        }
        (seal, open, t.elapsed())
    })
    .await?;
    let mbps = |d: Duration| total as f64 / (1 << 20) as f64 / d.as_secs_f64();
    report.figures = vec![
        fig(
            "seal 64 KiB values (XChaCha20-Poly1305)",
            mbps(seal),
            "MiB/s",
        ),
        fig("open 64 KiB values", mbps(open), "MiB/s"),
    ];
    report.baseline = vec![fig(
        "memcpy of the same bytes into a new buffer",
        mbps(copy),
        "MiB/s",
    )];
    report.ratio = Some(("seal MiB/s / memcpy MiB/s".into(), mbps(seal) / mbps(copy)));
    report
        .notes
        .push(format!("{} MiB in {rounds} values, one core", total >> 20));
    Ok(report)
}
