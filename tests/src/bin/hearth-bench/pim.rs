//! Contacts and calendars: importing vCard/iCalendar files, a CardDAV client's first
//! sync of a whole address book, and its incremental sync after one change — each
//! beside a baseline measured in the same run.

use std::time::{Duration, Instant};

use hearth_node::access::{self, NewGrant};
use hearth_node::pim::{self, Kind};
use hearth_protocol::CollectionName;
use hearth_protocol::scope::Scope;

use crate::Opts;
use crate::nodes::{http_client, owner_token, start};
use crate::report::{Report, fig};

fn contacts_file(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:bench-contact-{i}\r\nFN:Person {i}\r\nN:{i};Person;;;\r\nitem1.EMAIL;type=INTERNET;type=pref:person{i}@example.org\r\nitem1.X-ABLabel:_$!<Work>!$_\r\nTEL;type=CELL:+33 6 12 34 {:02} {:02}\r\nADR;type=HOME:;;{i} rue des Lilas;Lyon;;69003;France\r\nORG:Example {i}\r\nNOTE:Met at conference number {i}\\, a note long enough to fold over the seventy-five octet limit.\r\nCATEGORIES:friends,work\r\nEND:VCARD\r\n",
            i % 100,
            (i / 100) % 100
        ));
    }
    out
}

fn events_file(n: usize) -> String {
    let mut out = String::from(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Bench//EN\r\nBEGIN:VTIMEZONE\r\nTZID:Europe/Paris\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\nDTSTART:19700329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n",
    );
    for i in 0..n {
        let day = 1 + i % 28;
        let month = 1 + (i / 28) % 12;
        let rule = if i % 10 == 0 {
            "RRULE:FREQ=WEEKLY;COUNT=10\r\n"
        } else {
            ""
        };
        out.push_str(&format!(
            "BEGIN:VEVENT\r\nUID:bench-event-{i}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART;TZID=Europe/Paris:2026{month:02}{day:02}T090000\r\nDTEND;TZID=Europe/Paris:2026{month:02}{day:02}T100000\r\n{rule}SUMMARY:Meeting {i}\r\nLOCATION:Room {}\r\nEND:VEVENT\r\n",
            i % 20
        ));
    }
    out.push_str("END:VCALENDAR\r\n");
    out
}

fn hrefs(xml: &str) -> Vec<String> {
    xml.split("<d:href>")
        .skip(1)
        .filter_map(|s| s.find("</d:href>").map(|end| s[..end].to_owned()))
        .collect()
}

fn element(xml: &str, name: &str) -> Option<String> {
    let open = xml.find(&format!("<d:{name}>"))? + name.len() + 4;
    let end = xml[open..].find("</")? + open;
    Some(xml[open..end].to_owned())
}

pub async fn contacts_and_calendars(opts: &Opts) -> anyhow::Result<Vec<Report>> {
    let n = if opts.quick { 2_000 } else { 10_000 };
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let node = start(&dir.path().join("vault"), false, vec![]).await?;
    let base = format!("http://{}", node.api_addr());
    let owner = owner_token(&node)?;
    let http = http_client()?;
    let mut reports = Vec::new();

    // Import: the HTTP import (parse, store, commit) beside parsing the same file alone.
    for (kind, name, text) in [
        (Kind::Contacts, "contacts", contacts_file(n)),
        (Kind::Calendar, "calendar", events_file(n)),
    ] {
        let mut report = Report::new(
            if kind == Kind::Contacts {
                "import contacts"
            } else {
                "import events"
            },
            "reported: import time beside parsing the same file alone",
        );
        let started = Instant::now();
        let (entries, skipped) =
            pim::read_file(kind, &text, hearth_node::Limits::default().max_record_bytes)?;
        let parse = started.elapsed();
        anyhow::ensure!(
            entries.len() == n && skipped.is_empty(),
            "the file reads whole"
        );
        let started = Instant::now();
        let answer = http
            .post(format!("{base}/v1/import/{name}"))
            .bearer_auth(&owner)
            .body(text.clone())
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let import = started.elapsed();
        anyhow::ensure!(answer.contains(&format!("\"imported\":{n}")), "{answer}");
        report.figures.push(fig(
            format!("{n} entries: import over HTTP"),
            import.as_secs_f64() * 1000.0,
            "ms",
        ));
        report.baseline.push(fig(
            format!("{n} entries: parse alone (calcard + fields)"),
            parse.as_secs_f64() * 1000.0,
            "ms",
        ));
        report.ratio = Some((
            "import / parse".into(),
            import.as_secs_f64() / parse.as_secs_f64(),
        ));
        reports.push(report);
    }

    // A DAV client with an app password, syncing the address book from empty.
    let v = node.vault();
    let (password, token) = app_password_grant(&node, "bench-phone", "contacts").await?;
    let book = format!("{base}/dav/contacts/contacts/");
    let propfind = reqwest::Method::from_bytes(b"PROPFIND")?;
    let report_method = reqwest::Method::from_bytes(b"REPORT")?;

    let mut report = Report::new(
        "carddav sync",
        "full sync <= 3x the JSON view of the same collection; incremental sync after one change <= 0.1x a full sync",
    );
    let started = Instant::now();
    let listing = http
        .request(propfind.clone(), &book)
        .basic_auth("phone", Some(&password))
        .header("Depth", "1")
        .body(r#"<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:sync-token/></d:prop></d:propfind>"#)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let token_now = element(&listing, "sync-token").unwrap_or_default();
    let cards: Vec<String> = hrefs(&listing)
        .into_iter()
        .filter(|h| h.ends_with(".vcf"))
        .collect();
    anyhow::ensure!(cards.len() == n, "{} cards listed", cards.len());
    let mut fetched = 0;
    for batch in cards.chunks(100) {
        let body: String = batch
            .iter()
            .map(|h| format!("<d:href>{h}</d:href>"))
            .collect();
        let xml = http
            .request(report_method.clone(), &book)
            .basic_auth("phone", Some(&password))
            .body(format!(
                r#"<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><c:address-data/></d:prop>{body}</c:addressbook-multiget>"#
            ))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        fetched += xml.matches("BEGIN:VCARD").count();
    }
    let full = started.elapsed();
    anyhow::ensure!(fetched == n, "{fetched} cards fetched");

    let started = Instant::now();
    let view = http
        .get(format!("{base}/v1/view/contacts"))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let json_view = started.elapsed();
    anyhow::ensure!(!view.is_empty());

    // One change by the owner, then the client's incremental sync.
    let contacts = CollectionName::parse("contacts")?;
    let first = v.collections().records(&contacts)?;
    let id = first[0]["id"].as_str().unwrap_or_default().to_owned();
    http.patch(format!("{base}/v1/collections/contacts/records/{id}"))
        .bearer_auth(&owner)
        .json(&serde_json::json!({"title": "Changed"}))
        .send()
        .await?
        .error_for_status()?;
    let mut incremental = Duration::MAX;
    let mut changed = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let xml = http
            .request(report_method.clone(), &book)
            .basic_auth("phone", Some(&password))
            .body(format!(
                r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token>{token_now}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#
            ))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        incremental = incremental.min(started.elapsed());
        changed = hrefs(&xml).len();
    }
    anyhow::ensure!(changed == 1, "{changed} changes reported");
    report.figures.extend([
        fig(
            format!("{n} cards: full sync (PROPFIND + multiget by 100)"),
            full.as_secs_f64() * 1000.0,
            "ms",
        ),
        fig(
            "sync-collection after one change (best of 5)",
            incremental.as_secs_f64() * 1000.0,
            "ms",
        ),
    ]);
    report.baseline.push(fig(
        format!("{n} cards: GET /v1/view/contacts (JSON)"),
        json_view.as_secs_f64() * 1000.0,
        "ms",
    ));
    let full_ratio = full.as_secs_f64() / json_view.as_secs_f64();
    let incremental_ratio = incremental.as_secs_f64() / full.as_secs_f64();
    report.ratio = Some(("full sync / JSON view".into(), full_ratio));
    report
        .notes
        .push(format!("incremental / full sync: {incremental_ratio:.5}"));
    report.judge(&[full_ratio <= 3.0, incremental_ratio <= 0.1]);
    reports.push(report);
    reports.push(upload(&node, if opts.quick { 1_000 } else { 5_000 }).await?);
    node.shutdown().await?;
    Ok(reports)
}

/// A grant that reads and writes `collections`, unlimited, with an app password: the
/// password and the token.
async fn app_password_grant(
    node: &hearth_node::NodeHandle,
    service: &str,
    collections: &str,
) -> anyhow::Result<(String, String)> {
    let v = node.vault();
    let scope = Scope::parse(Some(collections), Some(collections), &[])?;
    let mut grant = NewGrant::new(service, scope);
    grant.app_password = true;
    grant.rate_per_minute = None;
    let (_, issued) = access::create_grant(v.collections(), v.keys(), grant)?;
    let password = issued
        .password
        .map(|p| p.to_string())
        .ok_or_else(|| anyhow::anyhow!("no app password"))?;
    v.store().commit().await?;
    Ok((password, issued.token))
}

/// A DAV client uploading a new address book card by card, under names that cannot be
/// record ids (a Google UID has an `@`, so the node keeps a name for each card) beside
/// the same upload under names that are ids. The cost of one PUT must not grow with the
/// book: the last tenth of the uploads against the first tenth.
async fn upload(node: &hearth_node::NodeHandle, n: usize) -> anyhow::Result<Report> {
    let (password, _) =
        app_password_grant(node, "bench-upload", "contacts-named,contacts-plain").await?;
    let http = http_client()?;
    let base = format!("http://{}/dav/contacts", node.api_addr());
    let mut report = Report::new(
        "carddav upload",
        "cards under client names <= 2x cards under id names; the last tenth's PUTs <= 1.5x the first tenth's",
    );
    // Per PUT, in order.
    let mut times = Vec::new();
    for (book, suffix) in [("contacts-plain", ""), ("contacts-named", "@example.org")] {
        let mut each = Vec::with_capacity(n);
        for i in 0..n {
            let card = format!(
                "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:bench-{i}{suffix}\r\nFN:Person {i}\r\nN:{i};Person;;;\r\nEMAIL:person{i}@example.org\r\nEND:VCARD\r\n"
            );
            let started = Instant::now();
            let status = http
                .put(format!("{base}/{book}/bench-{i}{suffix}.vcf"))
                .basic_auth("phone", Some(&password))
                .header("If-None-Match", "*")
                .body(card)
                .send()
                .await?
                .status();
            each.push(started.elapsed());
            anyhow::ensure!(status.as_u16() == 201, "PUT {i} to {book}: {status}");
        }
        times.push(each);
    }
    let total = |t: &[Duration]| t.iter().sum::<Duration>().as_secs_f64() * 1000.0;
    let tenth = (n / 10).max(1);
    let mean = |t: &[Duration]| total(t) / t.len() as f64;
    let (plain, named) = (&times[0], &times[1]);
    let growth = mean(&named[n - tenth..]) / mean(&named[..tenth]);
    report.figures.extend([
        fig(
            format!("{n} cards under client names: upload"),
            total(named),
            "ms",
        ),
        fig(
            "client names: mean PUT, first tenth",
            mean(&named[..tenth]),
            "ms",
        ),
        fig(
            "client names: mean PUT, last tenth",
            mean(&named[n - tenth..]),
            "ms",
        ),
    ]);
    report.baseline.extend([
        fig(
            format!("{n} cards under id names: upload"),
            total(plain),
            "ms",
        ),
        fig(
            "id names: mean PUT, last tenth",
            mean(&plain[n - tenth..]),
            "ms",
        ),
    ]);
    let ratio = total(named) / total(plain);
    report.ratio = Some(("client names / id names".into(), ratio));
    report.notes.push(format!(
        "client names: last tenth / first tenth {growth:.2}"
    ));
    report.judge(&[ratio <= 2.0, growth <= 1.5]);
    Ok(report)
}
