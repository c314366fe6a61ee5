//! Search over a vault of 100,000 records (`--quick`: 20,000): how long the index
//! takes to take them in, then the time of `GET /v1/search` over HTTP for names,
//! name pairs and cities, against scanning every record's text in this process for
//! the same words (what `hearth ls | grep` would cost, without the disk).

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde_json::{Value, json};

use crate::Opts;
use crate::nodes::{http_client, owner_token, start};
use crate::report::{Report, fig, percentile_ms};

const FIRST: [&str; 40] = [
    "ada",
    "alan",
    "grace",
    "edsger",
    "barbara",
    "donald",
    "john",
    "margaret",
    "tim",
    "linus",
    "ken",
    "dennis",
    "bjarne",
    "guido",
    "james",
    "niklaus",
    "frances",
    "karen",
    "radia",
    "shafi",
    "leslie",
    "tony",
    "robin",
    "butler",
    "fernando",
    "jean",
    "sophie",
    "marie",
    "emmy",
    "hedy",
    "katherine",
    "dorothy",
    "mary",
    "annie",
    "evelyn",
    "joan",
    "lynn",
    "judea",
    "whitfield",
    "martin",
];
const LAST: [&str; 50] = [
    "lovelace",
    "turing",
    "hopper",
    "dijkstra",
    "liskov",
    "knuth",
    "mccarthy",
    "hamilton",
    "berners",
    "torvalds",
    "thompson",
    "ritchie",
    "stroustrup",
    "rossum",
    "gosling",
    "wirth",
    "allen",
    "jones",
    "perlman",
    "goldwasser",
    "lamport",
    "hoare",
    "milner",
    "lampson",
    "corbato",
    "sammet",
    "wilson",
    "curie",
    "noether",
    "lamarr",
    "johnson",
    "vaughan",
    "jackson",
    "easley",
    "boyd",
    "clarke",
    "conway",
    "pearl",
    "diffie",
    "hellman",
    "rivest",
    "shamir",
    "adleman",
    "kahn",
    "cerf",
    "engelbart",
    "kay",
    "sutherland",
    "backus",
    "naur",
];
const CITIES: [&str; 12] = [
    "london", "paris", "berlin", "lisbon", "oslo", "vienna", "prague", "dublin", "rome", "madrid",
    "zurich", "helsinki",
];

fn record(i: usize) -> Value {
    let first = FIRST[i % FIRST.len()];
    let last = LAST[(i / FIRST.len()) % LAST.len()];
    let city = CITIES[(i * 7) % CITIES.len()];
    json!({
        "id": format!("p{i}"),
        "name": format!("{first} {last} {i}"),
        "email": format!("{first}.{last}{i}@example.org"),
        "city": city,
        "notes": format!("met at the {} meeting, likes {}", CITIES[(i * 3) % CITIES.len()], LAST[(i * 11) % LAST.len()]),
    })
}

/// `GET /v1/search` of `q`, top 20.
async fn search(http: &reqwest::Client, base: &str, token: &str, q: &str) -> anyhow::Result<Value> {
    Ok(http
        .get(format!("{base}/v1/search"))
        .query(&[("q", q), ("limit", "20")])
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

pub async fn search_scenario(opts: &Opts) -> anyhow::Result<Report> {
    let count = if opts.quick { 20_000 } else { 100_000 };
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let node = start(dir.path(), false, Vec::new()).await?;
    let http = http_client()?;
    let base = format!("http://{}", node.api_addr());
    let token = owner_token(&node)?;
    let records: Vec<Value> = (0..count).map(record).collect();
    let written = Instant::now();
    for batch in records.chunks(5000) {
        http.post(format!("{base}/v1/restore/people"))
            .bearer_auth(&token)
            .json(&batch)
            .send()
            .await?
            .error_for_status()?;
    }
    let write_time = written.elapsed();
    // The index follows: until the last record is found.
    let last = format!("{}", count - 1);
    let indexed = Instant::now();
    loop {
        let found = search(&http, &base, &token, &last).await?;
        if found["hits"].as_array().is_some_and(|h| !h.is_empty()) {
            break;
        }
        anyhow::ensure!(
            indexed.elapsed() < Duration::from_secs(600),
            "the index never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let index_lag = indexed.elapsed();

    let mut rng = rand::thread_rng();
    let queries: Vec<String> = (0..300)
        .map(|i| match i % 3 {
            0 => LAST[rng.gen_range(0..LAST.len())].to_owned(),
            1 => format!(
                "{} {}",
                FIRST[rng.gen_range(0..FIRST.len())],
                LAST[rng.gen_range(0..LAST.len())]
            ),
            _ => CITIES[rng.gen_range(0..CITIES.len())].to_owned(),
        })
        .collect();
    let mut times = Vec::new();
    let mut hits_seen = 0usize;
    for q in &queries {
        let started = Instant::now();
        let found = search(&http, &base, &token, q).await?;
        times.push(started.elapsed());
        hits_seen += found["hits"].as_array().context("hits")?.len();
    }
    times.sort();
    node.shutdown().await?;

    // The baseline: every record's text in memory, lower case, scanned for the words.
    let texts: Vec<String> = records
        .iter()
        .map(|r| r.to_string().to_lowercase())
        .collect();
    let mut scans = Vec::new();
    for q in &queries {
        let words: Vec<&str> = q.split(' ').collect();
        let started = Instant::now();
        let n = texts
            .iter()
            .filter(|t| words.iter().all(|w| t.contains(w)))
            .count();
        std::hint::black_box(n);
        scans.push(started.elapsed());
    }
    scans.sort();

    let p50 = percentile_ms(&times, 50);
    let mut report = Report::new(
        format!("search over {count} records"),
        "p50 <= 50 ms (issue 29)",
    );
    report.figures = vec![
        fig("GET /v1/search p50 (top 20, titles read)", p50, "ms"),
        fig("GET /v1/search p95", percentile_ms(&times, 95), "ms"),
        fig(
            "written (restore, 5,000 a request)",
            write_time.as_secs_f64(),
            "s",
        ),
        fig(
            "then until the index had them all",
            index_lag.as_secs_f64(),
            "s",
        ),
    ];
    report.baseline = vec![
        fig(
            "scan every record's text in memory p50",
            percentile_ms(&scans, 50),
            "ms",
        ),
        fig("scan p95", percentile_ms(&scans, 95), "ms"),
    ];
    report.ratio = Some((
        "search p50 / in-memory scan p50".into(),
        p50 / percentile_ms(&scans, 50),
    ));
    report.notes.push(format!(
        "300 queries: a last name, a first and last name, a city; {hits_seen} hits shown in all"
    ));
    report.judge(&[p50 <= 50.0]);
    Ok(report)
}
