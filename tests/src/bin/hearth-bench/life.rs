//! A life's vault (issue 14, goal 2): half of its records are mail messages of ~2 KB,
//! the rest contacts, calendar events and notes; 20k records in a quick run, 100k in a
//! full one, 1M with `--scale`. A real `hearth up` process on it: how soon it answers,
//! what it holds in memory, and what one mail read, a page of mail and a view page
//! cost while the mail collection is not in memory, beside the same GET on a
//! collection of one record (same run). Last, one write to mail, which needs the
//! document, with what it costs in memory.

use std::path::Path;
use std::time::{Duration, Instant};

use hearth_node::access::{self, NewGrant};
use hearth_node::collections::RecordWrite;
use hearth_protocol::scope::Scope;
use hearth_protocol::{CollectionName, RecordId};
use hearth_tests::spawn_node;
use serde_json::{Map, Value, json};

use crate::Opts;
use crate::nodes::{http_client, start};
use crate::report::{Report, fig, peak_rss_mib, percentile_ms, rss_mib};

/// How many records: `--sizes` (its largest), else 1M with `--scale`, 20k quick, 100k.
pub(crate) fn size(opts: &Opts) -> usize {
    if let Some(n) = opts.sizes.iter().max() {
        return *n;
    }
    match (opts.quick, opts.scale) {
        (_, true) => 1_000_000,
        (true, false) => 20_000,
        (false, false) => 100_000,
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Record `i` of a collection, of the shape a person's data has.
fn record(collection: &str, i: usize) -> Map<String, Value> {
    object(match collection {
        "mail" => json!({
            "from": format!("sender{}@example.org", i % 997),
            "to": ["me@example.org"],
            "subject": format!("Message {i} about the plans for the weekend"),
            "date": 1_700_000_000 + i * 60,
            "seen": i.is_multiple_of(3),
            "body": format!("Message {i}. {}", "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(32)),
        }),
        "contacts" => json!({
            "name": format!("Person {i}"), "email": format!("person{i}@example.org"),
            "phone": "+33 6 12 34 56 78",
            "address": {"street": "12 rue des Lilas", "city": "Lyon", "zip": "69003"},
        }),
        "calendar" => json!({
            "title": format!("Event {i}"), "start": 1_700_000_000 + i * 3_600,
            "end": 1_700_003_600 + i * 3_600, "location": "Lyon",
        }),
        _ => json!({"title": format!("Note {i}"), "text": "A few lines of a note. ".repeat(8)}),
    })
}

/// The collections and their sizes for `n` records in all.
pub(crate) fn layout(n: usize) -> Vec<(&'static str, usize)> {
    vec![
        ("mail", n / 2),
        ("contacts", n / 8),
        ("calendar", n / 8),
        ("notes", n - n / 2 - 2 * (n / 8)),
    ]
}

/// Makes the vault in this process, in batches; returns a token reading mail's
/// senders and subjects.
pub(crate) async fn fill(home: &Path, n: usize) -> anyhow::Result<String> {
    let node = start(home, false, vec![]).await?;
    let v = node.vault();
    for (collection, count) in layout(n) {
        let name = CollectionName::parse(collection)?;
        for first in (0..count).step_by(2_000) {
            let writes = (first..(first + 2_000).min(count))
                .map(|i| {
                    Ok((
                        RecordId::parse(&format!("r{i:07}"))?,
                        RecordWrite::Put(record(collection, i)),
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            v.collections().write_many(&name, &writes)?;
        }
        v.store().commit().await?;
    }
    v.collections().put(
        &CollectionName::parse("tiny")?,
        &RecordId::parse("r0000000")?,
        &record("notes", 0),
    )?;
    let scope = Scope::parse(Some("mail.from,mail.subject,mail.date"), None, &[])?;
    let (_, token) =
        access::create_grant(v.collections(), v.keys(), NewGrant::new("bench", scope))?;
    v.store().commit().await?;
    node.shutdown().await?;
    Ok(token.token)
}

fn du_mib(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir) as f64 / 1024.0 / 1024.0
}

/// `count` sequential GETs made by `url(i)`, sorted latencies.
async fn timed_gets(
    http: &reqwest::Client,
    token: &str,
    count: usize,
    url: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        let response = http.get(url(i)).bearer_auth(token).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        anyhow::ensure!(status.is_success(), "GET {} -> {status}", url(i));
        anyhow::ensure!(!body.is_empty(), "GET {}: an empty answer", url(i));
        latencies.push(t.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

pub async fn life_vault(opts: &Opts) -> anyhow::Result<Vec<Report>> {
    let n = size(opts);
    let mail = n / 2;
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let home = dir.path().join("vault");
    let filled = Instant::now();
    let view_token = fill(&home, n).await?;
    let filled = filled.elapsed();
    let on_disk = du_mib(&home);

    let started = Instant::now();
    let node = tokio::task::block_in_place(|| spawn_node(&home, &[]));
    let (base, owner) = (node.base_url(), node.owner_token());
    let http = http_client()?;
    let first = http
        .get(format!("{base}/v1/collections/tiny/records/r0000000"))
        .bearer_auth(&owner)
        .send()
        .await?;
    if !first.status().is_success() {
        let status = first.status();
        let body = first.text().await.unwrap_or_default();
        let log = node.stderr();
        tokio::task::block_in_place(|| node.stop());
        anyhow::bail!("first read: {status} {body}\nthe node's log:\n{log}");
    }
    let answered = started.elapsed();
    let rss_started = rss_mib(Some(node.pid())).unwrap_or(f64::NAN);

    let reads = if opts.quick { 500 } else { 2_000 };
    let pick = move |i: usize| (i * 7_919 + 13) % mail;
    let tiny = timed_gets(&http, &owner, reads, |_| {
        format!("{base}/v1/collections/tiny/records/r0000000")
    })
    .await?;
    let one = timed_gets(&http, &owner, reads, |i| {
        format!("{base}/v1/collections/mail/records/r{:07}", pick(i))
    })
    .await?;
    let pages = timed_gets(&http, &owner, reads / 10, |i| {
        format!(
            "{base}/v1/collections/mail/records?limit=50&after=r{:07}",
            pick(i)
        )
    })
    .await?;
    let views = timed_gets(&http, &view_token, reads / 10, |i| {
        format!("{base}/v1/view/mail?limit=50&after=r{:07}", pick(i))
    })
    .await?;
    let rss_read = rss_mib(Some(node.pid())).unwrap_or(f64::NAN);
    let peak_read = peak_rss_mib(Some(node.pid())).unwrap_or(f64::NAN);

    let mut reports = Vec::new();
    let (p50, base50) = (percentile_ms(&one, 50), percentile_ms(&tiny, 50));
    let mut r = Report::new(
        format!("life's vault: reads, {n} records ({mail} mail)"),
        "answers <= 2 s; read p50 <= 1 ms with mail not in memory; peak RSS <= 300 MB",
    );
    r.figures = vec![
        fig("API answers after", answered.as_secs_f64(), "s"),
        fig("mail read p50", p50, "ms"),
        fig("mail read p99", percentile_ms(&one, 99), "ms"),
        fig("mail page of 50 p50", percentile_ms(&pages, 50), "ms"),
        fig("mail view page of 50 p50", percentile_ms(&views, 50), "ms"),
        fig("RSS after start", rss_started, "MiB"),
        fig("RSS after the reads", rss_read, "MiB"),
        fig("peak RSS", peak_read, "MiB"),
    ];
    r.baseline = vec![fig("read p50, a collection of 1 record", base50, "ms")];
    r.ratio = Some(("mail read p50 / 1-record read p50".into(), p50 / base50));
    r.notes.push(format!(
        "vault made in {filled:.1?}, {on_disk:.0} MiB on disk; {reads} single reads, {} pages and {} view pages at random places in mail",
        pages.len(),
        views.len()
    ));
    r.judge(&[
        answered <= Duration::from_secs(2),
        p50 <= 1.0,
        peak_read <= 300.0 * 1_000_000.0 / 1_048_576.0,
    ]);
    reports.push(r);

    // One write to mail: it needs the document (not the index) in memory.
    let t = Instant::now();
    http.put(format!(
        "{base}/v1/collections/mail/records/r{:07}",
        pick(1)
    ))
    .bearer_auth(&owner)
    .json(&record("mail", 1))
    .send()
    .await?
    .error_for_status()?;
    let first_write = t.elapsed();
    // Random messages: with 256 parts, most of these load the part they land in.
    let writes = timed_put(&http, &base, &owner, 50, pick).await?;
    // The same messages again: their parts are in memory.
    let again = timed_put(&http, &base, &owner, 50, pick).await?;
    let mut r = Report::new(
        format!("life's vault: writing to mail, {n} records ({mail} mail)"),
        "first <= 100 ms, then p50 <= 2 ms, p99 <= 10 ms (issue 26)",
    );
    r.figures = vec![
        fig(
            "first write after start",
            first_write.as_secs_f64() * 1e3,
            "ms",
        ),
        fig(
            "next writes p50 (random messages: most load their part)",
            percentile_ms(&writes, 50),
            "ms",
        ),
        fig("next writes p99", percentile_ms(&writes, 99), "ms"),
        fig(
            "the same messages again p50 (parts in memory)",
            percentile_ms(&again, 50),
            "ms",
        ),
        fig(
            "the same messages again p99",
            percentile_ms(&again, 99),
            "ms",
        ),
        fig(
            "RSS after writing",
            rss_mib(Some(node.pid())).unwrap_or(f64::NAN),
            "MiB",
        ),
        fig(
            "peak RSS",
            peak_rss_mib(Some(node.pid())).unwrap_or(f64::NAN),
            "MiB",
        ),
    ];
    r.judge(&[
        first_write <= Duration::from_millis(100),
        percentile_ms(&writes, 50) <= 2.0,
        percentile_ms(&writes, 99) <= 10.0,
    ]);
    reports.push(r);

    // A cold load of a big collection beside reads of another: listing mail's
    // conflicts loads every part of it, while a client reads one record of `tiny`.
    let loading = {
        let (http, base, owner) = (http.clone(), base.clone(), owner.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            http.get(format!("{base}/v1/collections/mail/conflicts"))
                .bearer_auth(&owner)
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(t.elapsed())
        })
    };
    let mut beside = Vec::new();
    while !loading.is_finished() {
        let t = Instant::now();
        http.get(format!("{base}/v1/collections/tiny/records/r0000000"))
            .bearer_auth(&owner)
            .send()
            .await?
            .error_for_status()?;
        beside.push(t.elapsed());
    }
    let load = loading.await??;
    beside.sort();
    let alone99 = percentile_ms(&tiny, 99);
    let beside99 = percentile_ms(&beside, 99);
    let mut r = Report::new(
        format!(
            "life's vault: a cold load of mail beside reads of another collection, {n} records"
        ),
        "reads of the other collection p99 <= 5 ms over their p99 alone (issue 26)",
    );
    r.figures = vec![
        fig(
            "mail loaded whole (its conflicts listed)",
            load.as_secs_f64() * 1e3,
            "ms",
        ),
        fig("reads of tiny meanwhile", beside.len() as f64, "reads"),
        fig(
            "reads of tiny meanwhile p50",
            percentile_ms(&beside, 50),
            "ms",
        ),
        fig("reads of tiny meanwhile p99", beside99, "ms"),
        fig(
            "peak RSS",
            peak_rss_mib(Some(node.pid())).unwrap_or(f64::NAN),
            "MiB",
        ),
    ];
    r.baseline = vec![fig("reads of tiny alone p99", alone99, "ms")];
    r.judge(&[beside99 <= alone99 + 5.0]);
    reports.push(r);
    tokio::task::block_in_place(|| node.stop());
    Ok(reports)
}

async fn timed_put(
    http: &reqwest::Client,
    base: &str,
    owner: &str,
    count: usize,
    pick: impl Fn(usize) -> usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let mut body = record("mail", pick(i + 2));
        body.insert("seen".into(), json!(true));
        let t = Instant::now();
        http.put(format!(
            "{base}/v1/collections/mail/records/r{:07}",
            pick(i + 2)
        ))
        .bearer_auth(owner)
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}
