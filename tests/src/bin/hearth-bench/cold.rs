//! Cold start of a node on a vault of 100,000 records in 10 collections: time until
//! the API answers, and peak memory, measured on a separate process.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use hearth_protocol::{CollectionName, RecordId};
use serde_json::json;

use crate::Opts;
use crate::nodes::start;
use crate::report::{Report, fig, peak_rss_mib};

const COLLECTIONS: usize = 10;
const PER_COLLECTION: usize = 10_000;

/// Runs in a child process: starts the node as `hearth up` would (mesh on), prints
/// its API address, and stops when its standard input closes.
pub fn child(home: &Path) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let node = start(home, true, vec![]).await?;
        println!("{}", node.api_addr());
        std::io::stdout().flush()?;
        let mut line = String::new();
        tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await??;
        node.shutdown().await?;
        Ok(())
    })
}

pub async fn cold_start(opts: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "cold start",
        "API answers <= 2 s, peak RSS <= 500 MB (100k records)",
    );
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let home = dir.path().join("vault");
    let created = Instant::now();
    {
        let node = start(&home, false, vec![]).await?;
        let v = node.vault();
        for c in 0..COLLECTIONS {
            let name = CollectionName::parse(&format!("c{c}"))?;
            for i in 0..PER_COLLECTION {
                let record = json!({
                    "name": format!("Person {i}"), "email": format!("p{i}@example.org"),
                    "phone": "+33 6 12 34 56 78", "n": i, "tags": ["a", "b"],
                });
                v.collections().put(
                    &name,
                    &RecordId::parse(&format!("r{i}"))?,
                    record.as_object().context("an object")?,
                )?;
            }
        }
        v.store().commit().await?;
        node.shutdown().await?;
    }
    let created = created.elapsed();
    let owner = std::fs::read_to_string(home.join("owner.token"))?
        .trim()
        .to_owned();

    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("child-cold-start")
        .arg(&home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().context("the child's stdout")?);
    let mut addr = String::new();
    stdout.read_line(&mut addr)?;
    let base = format!("http://{}", addr.trim());
    let http = crate::nodes::http_client()?;
    let answered = loop {
        let answer = http
            .get(format!("{base}/v1/status"))
            .bearer_auth(&owner)
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the node never answered"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let rss_at_answer = peak_rss_mib(Some(pid)).unwrap_or(f64::NAN);
    let t = Instant::now();
    let mut records = 0;
    for c in 0..COLLECTIONS {
        let list: Vec<serde_json::Value> = http
            .get(format!("{base}/v1/collections/c{c}/records"))
            .bearer_auth(&owner)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        records += list.len();
    }
    let read_all = t.elapsed();
    anyhow::ensure!(
        records == COLLECTIONS * PER_COLLECTION,
        "read {records} records"
    );
    let rss_after_reads = peak_rss_mib(Some(pid)).unwrap_or(f64::NAN);
    drop(child.stdin.take());
    child.wait()?;

    let answered_ms = answered.as_secs_f64() * 1e3;
    report.figures = vec![
        fig(
            "process start until GET /v1/status answers",
            answered_ms,
            "ms",
        ),
        fig("peak RSS when the API answers", rss_at_answer, "MiB"),
        fig(
            "then every record read (all 10 collections loaded)",
            read_all.as_secs_f64() * 1e3,
            "ms",
        ),
        fig(
            "peak RSS with every collection loaded",
            rss_after_reads,
            "MiB",
        ),
    ];
    report.notes.push(format!(
        "{} records of ~150 bytes in {COLLECTIONS} collections, written as separate puts in {created:.2?}",
        COLLECTIONS * PER_COLLECTION
    ));
    let mb = |mib: f64| mib * 1.048_576;
    report.judge(&[answered_ms <= 2_000.0, mb(rss_after_reads) <= 500.0]);
    Ok(report)
}
