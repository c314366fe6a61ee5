//! Two devices on 127.0.0.1: a new device receiving a vault, one edit crossing over,
//! a revocation reaching the other device, and a blob moving across — the blob against
//! a raw libp2p stream (TCP, Noise, Yamux, as the mesh uses) moving the same bytes.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use hearth_node::NodeHandle;
use hearth_node::access::{self, AccessError, Credentials, NewGrant};
use hearth_protocol::scope::Scope;
use hearth_protocol::{CollectionName, RecordId};
use libp2p::{StreamProtocol, Swarm, noise, tcp, yamux};
use serde_json::json;

use crate::Opts;
use crate::nodes::{http_client, join, start, until, upload_blob};
use crate::report::{Report, fig, percentile_ms};

const RECORDS: usize = 10_000;

pub async fn two_devices(opts: &Opts) -> anyhow::Result<Vec<Report>> {
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let a = start(&dir.path().join("a"), true, vec![]).await?;
    let contacts = CollectionName::parse("contacts")?;
    let written = Instant::now();
    for i in 0..RECORDS {
        let record =
            json!({"name": format!("Person {i}"), "email": format!("p{i}@example.org"), "n": i});
        a.vault().collections().put(
            &contacts,
            &RecordId::parse(&format!("r{i}"))?,
            record.as_object().context("an object")?,
        )?;
    }
    a.vault().store().commit().await?;
    let written = written.elapsed();

    let mut reports = Vec::new();
    let mut new_device = Report::new("sync, new device", "<= 1 s on loopback");
    let started = Instant::now();
    let b = join(&a, &dir.path().join("b")).await?;
    let joined = started.elapsed();
    let b_vault = b.vault().clone();
    let c = contacts.clone();
    until(
        "the new device receives every record",
        Duration::from_secs(120),
        || b_vault.collections().count(&c).unwrap_or(0) >= RECORDS,
    )
    .await?;
    let total = started.elapsed();
    new_device.figures = vec![
        fig("pairing and start of B", joined.as_secs_f64() * 1e3, "ms"),
        fig(
            format!("{RECORDS} records readable on B (from pairing)"),
            total.as_secs_f64() * 1e3,
            "ms",
        ),
    ];
    new_device.notes.push(format!(
        "{RECORDS} records written on A as {RECORDS} separate puts in {written:.2?}"
    ));
    new_device.judge(&[total <= Duration::from_secs(1)]);
    reports.push(new_device);

    reports.push(one_edit(&a, &b, &contacts).await?);
    reports.push(revocation(&a, &b, opts).await?);
    reports.push(blob_sync(&a, &b, opts).await?);
    b.shutdown().await?;
    a.shutdown().await?;
    Ok(reports)
}

async fn one_edit(
    a: &NodeHandle,
    b: &NodeHandle,
    contacts: &CollectionName,
) -> anyhow::Result<Report> {
    let mut report = Report::new("sync, one edit", "p50 <= 10 ms, p99 <= 50 ms");
    let mut latencies = Vec::new();
    for i in 0..200 {
        let id = RecordId::parse(&format!("live{i}"))?;
        let t = Instant::now();
        a.vault().collections().put(
            contacts,
            &id,
            json!({"i": i}).as_object().context("an object")?,
        )?;
        a.vault().store().commit().await?;
        let b_vault = b.vault().clone();
        let (c, id2) = (contacts.clone(), id.clone());
        until("an edit reaches B", Duration::from_secs(30), || {
            matches!(b_vault.collections().get(&c, &id2), Ok(Some(_)))
        })
        .await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let (p50, p99) = (percentile_ms(&latencies, 50), percentile_ms(&latencies, 99));
    report.figures = vec![
        fig("put+commit on A until B serves it, p50", p50, "ms"),
        fig("p99", p99, "ms"),
        fig("max", percentile_ms(&latencies, 100), "ms"),
    ];
    report.notes.push(format!(
        "200 edits, one at a time, in a collection of {RECORDS} records"
    ));
    report.judge(&[p50 <= 10.0, p99 <= 50.0]);
    Ok(report)
}

async fn revocation(a: &NodeHandle, b: &NodeHandle, opts: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new("revocation", "p50 <= 500 ms");
    let rounds = if opts.quick { 10 } else { 40 };
    let mut latencies = Vec::new();
    for round in 0..rounds {
        let scope = Scope::parse(Some("contacts.name"), None, &[])?;
        let (grant, token) = access::create_grant(
            a.vault().collections(),
            a.vault().keys(),
            NewGrant::new(&format!("service-{round}"), scope),
        )?;
        let token = token.token;
        a.vault().store().commit().await?;
        let b_vault = b.vault().clone();
        let t = token.clone();
        until_admitted("the grant reaches B", &b_vault, &t, |r| r.is_ok()).await?;
        let started = Instant::now();
        access::revoke(a.vault().collections(), &grant.id)?;
        a.vault().store().commit().await?;
        until_admitted("B refuses the revoked token", &b_vault, &token, |r| {
            matches!(r, Err(AccessError::Revoked))
        })
        .await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p50 = percentile_ms(&latencies, 50);
    report.figures = vec![
        fig("revoke on A until B refuses the token, p50", p50, "ms"),
        fig("max", percentile_ms(&latencies, 100), "ms"),
    ];
    report.notes.push(format!(
        "{rounds} grants, each revoked once B had accepted it"
    ));
    report.judge(&[p50 <= 500.0]);
    Ok(report)
}

/// Deterministic bytes that do not repeat from chunk to chunk (so nothing dedups).
fn pseudo_random_chunk(index: u64, len: usize) -> Bytes {
    let mut state = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(&crate::xorshift(&mut state).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

async fn blob_sync(a: &NodeHandle, b: &NodeHandle, opts: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new("blob sync", ">= 0.5x a raw libp2p stream (TCP+Noise+Yamux)");
    let size: u64 = if opts.quick { 256 << 20 } else { 1 << 30 };
    let piece = 1 << 20;
    let mib = (size >> 20) as f64;
    let body = futures::stream::iter(0..size / piece)
        .map(move |i| Ok::<_, std::io::Error>(pseudo_random_chunk(i, piece as usize)));
    let http = http_client()?;
    let started = Instant::now();
    let id = upload_blob(&http, a, reqwest::Body::wrap_stream(body)).await?;
    let put = started.elapsed();
    let b_vault = b.vault().clone();
    let transfer = until("B has the blob", Duration::from_secs(600), || {
        b_vault.blobs().has_blob(id).unwrap_or(false)
    })
    .await?;
    let raw = raw_libp2p_transfer(size).await?;
    let hearth_rate = mib / transfer.as_secs_f64();
    let raw_rate = mib / raw.as_secs_f64();
    report.figures = vec![
        fig(
            format!("{mib} MiB from A to B (both sealing at rest)"),
            hearth_rate,
            "MiB/s",
        ),
        fig(
            "upload to A over HTTP (sealed, fsynced)",
            mib / put.as_secs_f64(),
            "MiB/s",
        ),
    ];
    report.baseline = vec![fig("raw libp2p stream, same bytes", raw_rate, "MiB/s")];
    report.ratio = Some((
        "Hearth MiB/s / raw stream MiB/s".into(),
        hearth_rate / raw_rate,
    ));
    report.notes.push(format!(
        "from A's answer to the upload until B holds every chunk: {transfer:.2?}; raw stream: {raw:.2?}"
    ));
    report.judge(&[hearth_rate / raw_rate >= 0.5]);
    Ok(report)
}

fn bare_swarm() -> anyhow::Result<Swarm<libp2p_stream::Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// Moves `size` bytes over one libp2p stream between two swarms on 127.0.0.1.
async fn raw_libp2p_transfer(size: u64) -> anyhow::Result<Duration> {
    const PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth-bench/raw/1");
    let mut receiver = bare_swarm()?;
    let mut sender = bare_swarm()?;
    let mut incoming = receiver.behaviour().new_control().accept(PROTOCOL)?;
    let mut control = sender.behaviour().new_control();
    receiver.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            receiver.select_next_some().await
        {
            break address;
        }
    };
    let receiver_id = *receiver.local_peer_id();
    sender.dial(addr.with(libp2p::multiaddr::Protocol::P2p(receiver_id)))?;
    let drive_r = tokio::spawn(async move {
        loop {
            receiver.select_next_some().await;
        }
    });
    let drive_s = tokio::spawn(async move {
        loop {
            sender.select_next_some().await;
        }
    });
    let reader = tokio::spawn(async move {
        let (_, mut stream) = incoming.next().await.context("a stream arrives")?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok::<_, anyhow::Error>((got, Instant::now()))
    });
    let mut stream = loop {
        match control.open_stream(receiver_id, PROTOCOL).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let chunk = pseudo_random_chunk(0, 1 << 20);
    let started = Instant::now();
    for _ in 0..size >> 20 {
        stream.write_all(&chunk).await?;
    }
    stream.close().await?;
    let (got, finished) = reader.await??;
    anyhow::ensure!(
        got == size,
        "the raw stream delivered {got} of {size} bytes"
    );
    drive_r.abort();
    drive_s.abort();
    Ok(finished - started)
}

/// Waits (at most 30 s) until the door's answer to `token` is what `wanted` says.
async fn until_admitted(
    what: &str,
    vault: &hearth_node::Vault,
    token: &str,
    wanted: impl Fn(&Result<hearth_node::access::Caller, AccessError>) -> bool,
) -> anyhow::Result<()> {
    let limit = Duration::from_secs(30);
    let start = Instant::now();
    while !wanted(&vault.door().admit(&Credentials::local(token)).await) {
        anyhow::ensure!(start.elapsed() < limit, "{what}: not done after {limit:?}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}
