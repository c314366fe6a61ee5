//! Projected view reads over HTTP with the audit log on, against a bare axum handler
//! returning the same bytes.

use std::sync::Arc;

use hearth_node::access::{self, NewGrant};
use hearth_protocol::scope::Scope;
use hearth_protocol::{CollectionName, RecordId};
use serde_json::json;

use crate::Opts;
use crate::nodes::{http_client, http_load, start};
use crate::report::{Report, fig, percentile_ms};

pub async fn view_reads(opts: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "view reads",
        ">= 0.5x a bare axum handler's requests/s; p99 <= 10 ms at 64 connections",
    );
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let node = start(&dir.path().join("vault"), false, vec![]).await?;
    let v = node.vault();
    let contacts = CollectionName::parse("contacts")?;
    for i in 0..1000u32 {
        let record = json!({
            "name": format!("Person {i}"), "email": format!("person{i}@example.org"),
            "phone": "+33 6 12 34 56 78", "tag": if i.is_multiple_of(2) { "work" } else { "home" },
            "address": {"street": "12 rue des Lilas", "city": "Lyon", "zip": "69003"},
            "notes": "n".repeat(800), "private": "p".repeat(300),
        });
        v.collections().put(
            &contacts,
            &RecordId::parse(&format!("r{i}"))?,
            record.as_object().expect("an object"),
        )?;
    }
    let scope = Scope::parse(
        Some("contacts.name,contacts.email,contacts.phone,contacts.address,contacts.notes"),
        None,
        &[],
    )?;
    let (_, token) =
        access::create_grant(v.collections(), v.keys(), NewGrant::new("bench", scope))?;
    let token = token.token;
    v.store().commit().await?;
    let base = format!("http://{}", node.api_addr());
    let http = http_client()?;
    let sample = http
        .get(format!("{base}/v1/view/contacts/r1"))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;

    // The baseline serves the same bytes from memory, no checks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let baseline_addr = listener.local_addr()?;
    let bytes = Arc::new(sample.clone());
    let app = axum::Router::new().route(
        "/v1/view/contacts/{id}",
        axum::routing::get(move || {
            let bytes = bytes.clone();
            async move { ([("content-type", "application/json")], (*bytes).clone()) }
        }),
    );
    // A second baseline makes one durable write per request, as the audit log does:
    // the same answer after a sled insert + flush of an entry-sized value.
    let baseline_dir = tempfile::tempdir_in(&opts.dir)?;
    let db = sled::open(baseline_dir.path().join("sled"))?;
    let durable_bytes = Arc::new(sample.clone());
    let app = app.route(
        "/durable/{id}",
        axum::routing::get(move || {
            let (db, bytes) = (db.clone(), durable_bytes.clone());
            async move {
                let written = tokio::task::spawn_blocking(move || {
                    let key = db.generate_id()?.to_be_bytes();
                    db.insert(key, vec![0x61u8; 400])?;
                    db.flush()
                })
                .await;
                match written {
                    Ok(Ok(_)) => Ok(([("content-type", "application/json")], (*bytes).clone())),
                    _ => Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                }
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut ok = Vec::new();
    for connections in [1usize, 64] {
        let (h, t) = (http.clone(), token.clone());
        let b = format!("http://{baseline_addr}");
        let bare = http_load(connections, opts.duration(), move |i| {
            h.get(format!("{b}/v1/view/contacts/r{}", i % 1000))
                .bearer_auth(&t)
        })
        .await?;
        let (h, t, b) = (http.clone(), token.clone(), base.clone());
        let hearth = http_load(connections, opts.duration(), move |i| {
            h.get(format!("{b}/v1/view/contacts/r{}", i % 1000))
                .bearer_auth(&t)
        })
        .await?;
        if connections == 1 {
            let (h, t) = (http.clone(), token.clone());
            let b = format!("http://{baseline_addr}");
            let durable = http_load(1, opts.duration(), move |i| {
                h.get(format!("{b}/durable/r{}", i % 1000)).bearer_auth(&t)
            })
            .await?;
            report.baseline.push(fig(
                "1 conn: bare axum + sled insert+flush per request",
                durable.per_second,
                "req/s",
            ));
            report.notes.push(format!(
                "1 connection: {:.2}x a handler that makes one durable write per request",
                hearth.per_second / durable.per_second
            ));
        }
        let ratio = hearth.per_second / bare.per_second;
        let p99 = percentile_ms(&hearth.latencies, 99);
        report.figures.extend([
            fig(
                format!("{connections} conn: view requests/s"),
                hearth.per_second,
                "req/s",
            ),
            fig(
                format!("{connections} conn: view p50"),
                percentile_ms(&hearth.latencies, 50),
                "ms",
            ),
            fig(format!("{connections} conn: view p99"), p99, "ms"),
        ]);
        report.baseline.extend([
            fig(
                format!("{connections} conn: bare axum requests/s"),
                bare.per_second,
                "req/s",
            ),
            fig(
                format!("{connections} conn: bare axum p99"),
                percentile_ms(&bare.latencies, 99),
                "ms",
            ),
        ]);
        report.notes.push(format!(
            "{connections} connections: {ratio:.2}x the bare handler's requests/s"
        ));
        ok.push(ratio >= 0.5);
        if connections == 64 {
            report.ratio = Some(("view req/s / bare req/s at 64 connections".into(), ratio));
            ok.push(p99 <= 10.0);
        }
    }
    let entries = access::audit_entries(v.collections(), None)?.len();
    let verified = access::verify_audit(v.collections()).map_err(|e| anyhow::anyhow!("{}", e.1))?;
    report.notes.push(format!(
        "each answer is {} bytes; {entries} audit entries written, the chain verifies ({verified})",
        sample.len()
    ));
    server.abort();
    node.shutdown().await?;
    report.judge(&ok);
    Ok(report)
}
