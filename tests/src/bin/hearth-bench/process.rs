//! Process-level scenarios: real `hearth up` processes (the `hearth` built beside this
//! binary), the client here, in Rust, so its own cost is small. Each runs on a vault
//! whose `contacts` collection holds N records, for several N, so the table shows how
//! each cost grows with the vault: a durable put (one client, against sled's own insert +
//! flush in the same run), 32 concurrent writers, view reads at 64 connections (audit
//! on, as always), and one edit reaching a second device while it answers reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hearth_node::access::{self, NewGrant};
use hearth_node::collections::RecordWrite;
use hearth_protocol::scope::Scope;
use hearth_protocol::{CollectionName, RecordId};
use hearth_tests::{NodeProcess, join_and_spawn, spawn_node};
use serde_json::{Map, Value, json};

use crate::Opts;
use crate::nodes::{http_client, http_load, start};
use crate::put::sled_flush_latencies;
use crate::report::{Report, fig, peak_rss_mib, percentile_ms, rss_mib};

/// The sizes measured: 1k and 10k in a quick run, up to 100k in a full one, and 1M
/// with `--scale`; or those given with `--sizes`.
pub fn sizes(opts: &Opts) -> Vec<usize> {
    if !opts.sizes.is_empty() {
        return opts.sizes.clone();
    }
    match (opts.quick, opts.scale) {
        (_, true) => vec![1_000, 10_000, 100_000, 1_000_000],
        (true, false) => vec![1_000, 10_000],
        (false, false) => vec![1_000, 10_000, 100_000],
    }
}

fn contact(i: usize) -> Map<String, Value> {
    let record = json!({
        "name": format!("Person {i}"), "email": format!("person{i}@example.org"),
        "phone": "+33 6 12 34 56 78", "n": i,
        "address": {"street": "12 rue des Lilas", "city": "Lyon", "zip": "69003"},
        "notes": "n".repeat(200),
    });
    match record {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Makes a vault of `n` contacts in `home` (in this process, in batches: the API would
/// take minutes for a million) and a grant reading them; returns the grant's token.
async fn fill(home: &Path, n: usize) -> anyhow::Result<String> {
    let node = start(home, false, vec![]).await?;
    let v = node.vault();
    let contacts = CollectionName::parse("contacts")?;
    for first in (0..n).step_by(2_000) {
        let writes = (first..(first + 2_000).min(n))
            .map(|i| {
                Ok((
                    RecordId::parse(&format!("r{i}"))?,
                    RecordWrite::Put(contact(i)),
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        v.collections().write_many(&contacts, &writes)?;
    }
    let scope = Scope::parse(
        Some("contacts.name,contacts.email,contacts.phone,contacts.notes"),
        None,
        &[],
    )?;
    let (_, token) =
        access::create_grant(v.collections(), v.keys(), NewGrant::new("bench", scope))?;
    v.store().commit().await?;
    node.shutdown().await?;
    Ok(token.token)
}

fn memory_note(who: &str, node: &NodeProcess) -> String {
    format!(
        "{who}: {:.0} MiB resident, peak {:.0} MiB",
        rss_mib(Some(node.pid())).unwrap_or(f64::NAN),
        peak_rss_mib(Some(node.pid())).unwrap_or(f64::NAN)
    )
}

/// Builds `hearth` in release when run through cargo, so the processes measured run
/// the code of this checkout (a no-op when it is up to date).
fn build_hearth() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    if cfg!(debug_assertions) {
        return Ok(());
    }
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "hearth-cli"])
        .status()
        .context("running cargo build for the hearth binary")?;
    anyhow::ensure!(status.success(), "cargo build -p hearth-cli failed");
    Ok(())
}

pub async fn scenarios(opts: &Opts) -> anyhow::Result<Vec<Report>> {
    build_hearth()?;
    let bin = hearth_tests::hearth_bin();
    anyhow::ensure!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p hearth-cli` first",
        bin.display()
    );
    let mut reports = Vec::new();
    for n in sizes(opts) {
        reports.extend(at_size(opts, n).await?);
    }
    Ok(reports)
}

async fn at_size(opts: &Opts, n: usize) -> anyhow::Result<Vec<Report>> {
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let a_home: PathBuf = dir.path().join("a");
    let filled = Instant::now();
    let view_token = fill(&a_home, n).await?;
    let filled = filled.elapsed();
    let a = tokio::task::block_in_place(|| spawn_node(&a_home, &[]));
    let base = a.base_url();
    let owner = a.owner_token();
    let http = http_client()?;
    let mut reports = Vec::new();

    // One client, sequential durable puts, each replacing one of the n records.
    let put = {
        let (http, base, owner) = (http.clone(), base.clone(), owner.clone());
        move |i: usize| {
            let mut record = contact(i % n);
            record.insert("n".into(), json!(i));
            http.put(format!("{base}/v1/collections/contacts/records/r{}", i % n))
                .bearer_auth(&owner)
                .json(&record)
        }
    };
    let count = if opts.quick { 500 } else { 2_000 };
    for i in 0..50 {
        put(i).send().await?.error_for_status()?;
    }
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        put(i * 7_919).send().await?.error_for_status()?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let body = serde_json::to_vec(&contact(1))?;
    let baseline = sled_flush_latencies(&opts.dir, body, count).await?;
    let (p50, b50) = (percentile_ms(&latencies, 50), percentile_ms(&baseline, 50));
    let mut r = Report::new(
        format!("process: durable put, {n} records"),
        "p50 <= 3x sled insert+flush (same run)",
    );
    r.figures = vec![
        fig("put p50", p50, "ms"),
        fig("put p99", percentile_ms(&latencies, 99), "ms"),
    ];
    r.baseline = vec![
        fig("sled insert+flush p50", b50, "ms"),
        fig("sled insert+flush p99", percentile_ms(&baseline, 99), "ms"),
    ];
    r.ratio = Some(("put p50 / sled p50".into(), p50 / b50));
    r.notes.push(format!(
        "{count} sequential PUTs over HTTP, each replacing one of the {n} records; the vault was made in {filled:.1?}"
    ));
    r.judge(&[p50 <= 3.0 * b50]);
    reports.push(r);

    // 32 concurrent writers.
    let load = http_load(32, opts.duration(), move |i| put(1_000_000 + i)).await?;
    let mut r = Report::new(
        format!("process: 32 writers, {n} records"),
        ">= 5,000 acknowledged puts/s",
    );
    r.figures = vec![
        fig("acknowledged puts/s", load.per_second, "puts/s"),
        fig("put p50", percentile_ms(&load.latencies, 50), "ms"),
        fig("put p99", percentile_ms(&load.latencies, 99), "ms"),
    ];
    r.judge(&[load.per_second >= 5_000.0]);
    reports.push(r);

    // View reads at 64 connections.
    let load = {
        let (h, b, t) = (http.clone(), base.clone(), view_token.clone());
        http_load(64, opts.duration(), move |i| {
            h.get(format!("{b}/v1/view/contacts/r{}", (i * 7_919) % n))
                .bearer_auth(&t)
        })
        .await?
    };
    let p99 = percentile_ms(&load.latencies, 99);
    let mut r = Report::new(
        format!("process: view reads at 64 connections, {n} records"),
        "p99 <= 20 ms, audit on",
    );
    r.figures = vec![
        fig("view reads/s", load.per_second, "req/s"),
        fig("view p50", percentile_ms(&load.latencies, 50), "ms"),
        fig("view p99", p99, "ms"),
    ];
    r.notes.push(memory_note("the node", &a));
    r.judge(&[p99 <= 20.0]);
    reports.push(r);

    reports.push(one_edit(&a, dir.path(), n).await?);
    tokio::task::block_in_place(|| a.stop());
    Ok(reports)
}

/// B joins A's vault and catches up; then 200 edits on A, each until B shows it, while
/// another client reads single records on B.
async fn one_edit(a: &NodeProcess, dir: &Path, n: usize) -> anyhow::Result<Report> {
    let b_home = dir.join("b");
    let joined = Instant::now();
    let b = tokio::task::block_in_place(|| join_and_spawn(a, &b_home));
    let http = http_client()?;
    let (a_base, a_owner) = (a.base_url(), a.owner_token());
    let (b_base, b_owner) = (b.base_url(), b.owner_token());
    let get = {
        let (http, b_base, b_owner) = (http.clone(), b_base.clone(), b_owner.clone());
        move |id: String| {
            http.get(format!("{b_base}/v1/collections/contacts/records/{id}"))
                .bearer_auth(&b_owner)
        }
    };
    let limit = Duration::from_secs(60 + n as u64 / 1_000);
    loop {
        let answer = get(format!("r{}", n - 1)).send().await?;
        if answer.status().is_success() {
            break;
        }
        anyhow::ensure!(
            joined.elapsed() < limit,
            "B did not catch up with {n} records in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything A wrote before (the puts of the other scenarios too) is on B once B
    // lists the same collections with as many records each (a collection is synced a
    // part at a time, in no set order, so one record arriving says nothing of the
    // others; no record is removed here, so equal counts are equal sets).
    let list = |base: String, token: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}/v1/collections"))
                .bearer_auth(&token)
                .send()
                .await?
                .error_for_status()?
                .json::<serde_json::Value>()
                .await
                .map_err(anyhow::Error::from)
        }
    };
    let on_a = list(a_base.clone(), a_owner.clone()).await?;
    loop {
        if list(b_base.clone(), b_owner.clone()).await? == on_a {
            break;
        }
        anyhow::ensure!(
            joined.elapsed() < limit,
            "B did not catch up with A's writes in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = joined.elapsed();
    let rss_caught_up = rss_mib(Some(b.pid())).unwrap_or(f64::NAN);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_settled = rss_mib(Some(b.pid())).unwrap_or(f64::NAN);

    // How long a GET of the i-th record of a spread takes on B.
    let timed_get = {
        let get = get.clone();
        move |i: usize| {
            let request = get(format!("r{}", (i * 7_919 + 13) % n));
            async move {
                let t = Instant::now();
                request.send().await?.error_for_status()?.bytes().await?;
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        }
    };
    // Reads on B with nothing arriving: the baseline of a GET.
    let mut idle = Vec::new();
    for i in 0..500 {
        idle.push(timed_get(i).await?);
    }
    idle.sort();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut waits = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                waits.push(timed_get(i).await?);
                i += 1;
            }
            Ok::<_, anyhow::Error>(waits)
        })
    };
    let mut visible = Vec::new();
    let mut answered = Vec::new();
    for i in 0..200usize {
        let id = format!("r{}", (i * 31) % n);
        let mark = format!("\"edit {i}\"");
        let t = Instant::now();
        http.patch(format!("{a_base}/v1/collections/contacts/records/{id}"))
            .bearer_auth(&a_owner)
            .json(&json!({"note": format!("edit {i}")}))
            .send()
            .await?
            .error_for_status()?;
        answered.push(t.elapsed());
        loop {
            let body = get(id.clone()).send().await?.bytes().await?;
            if String::from_utf8_lossy(&body).contains(&mark) {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "edit {i} never showed on B"
            );
        }
        visible.push(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let mut waits = reader.await??;
    visible.sort();
    answered.sort();
    waits.sort();
    let (p50, p99) = (percentile_ms(&visible, 50), percentile_ms(&visible, 99));
    let get99 = percentile_ms(&waits, 99);
    let mut r = Report::new(
        format!("process: one edit to another device, {n} records"),
        "visible p50 <= 5 ms, p99 <= 20 ms; GET on B while it receives p99 <= 2 ms",
    );
    r.figures = vec![
        fig("edit visible on B p50", p50, "ms"),
        fig("edit visible on B p99", p99, "ms"),
        fig("edit visible on B max", percentile_ms(&visible, 100), "ms"),
        fig(
            "of which A's answer p50",
            percentile_ms(&answered, 50),
            "ms",
        ),
        fig(
            "of which A's answer p99",
            percentile_ms(&answered, 99),
            "ms",
        ),
        fig(
            "GET on B while it receives p50",
            percentile_ms(&waits, 50),
            "ms",
        ),
        fig("GET on B while it receives p99", get99, "ms"),
        fig(
            "GET on B while it receives max",
            percentile_ms(&waits, 100),
            "ms",
        ),
    ];
    r.baseline = vec![
        fig(
            "GET on B, nothing arriving, p50",
            percentile_ms(&idle, 50),
            "ms",
        ),
        fig(
            "GET on B, nothing arriving, p99",
            percentile_ms(&idle, 99),
            "ms",
        ),
    ];
    r.notes.push(format!(
        "B caught up with {n} records (and the other scenarios' puts) {caught_up:.1?} after it joined ({rss_caught_up:.0} MiB resident then, {rss_settled:.0} MiB 2 s later); {} GETs during the edits",
        waits.len()
    ));
    r.notes.push(memory_note("B", &b));
    r.judge(&[p50 <= 5.0, p99 <= 20.0, get99 <= 2.0]);
    tokio::task::block_in_place(|| b.stop());
    Ok(r)
}
