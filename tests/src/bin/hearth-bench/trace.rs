//! The automerge-perf editing trace applied through Hearth's collection layer and
//! persisted, against bare Automerge applying and persisting the same trace. Each side
//! runs in its own process so its peak memory is its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use hearth_node::records::TextEdit;
use hearth_protocol::{CollectionName, RecordId};
use serde_json::{Value, json};

use crate::Opts;
use crate::report::{Report, fig, peak_rss_mib};

/// Where the public trace lives, beside the project.
fn trace_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/automerge-perf-edits.json")
}

/// The trace's edits, or a generated one of the same shape when the file is absent.
pub fn load_trace(path: &Path) -> anyhow::Result<(Vec<TextEdit>, bool)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok((generated_trace(259_778), false));
    };
    let raw: Vec<Vec<Value>> =
        serde_json::from_str(&text).context("the trace is a JSON array of edits")?;
    let edits = raw
        .into_iter()
        .map(|e| {
            let position = e
                .first()
                .and_then(Value::as_u64)
                .context("an edit's position")? as usize;
            let delete = e
                .get(1)
                .and_then(Value::as_u64)
                .context("an edit's delete count")? as usize;
            let insert: String = e[2..].iter().filter_map(Value::as_str).collect();
            Ok(TextEdit {
                position,
                delete,
                insert,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((edits, true))
}

/// Typing with some deletions, at positions near the previous one, like the real trace.
fn generated_trace(n: usize) -> Vec<TextEdit> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || crate::xorshift(&mut state);
    let (mut length, mut cursor) = (0usize, 0usize);
    (0..n)
        .map(|_| {
            if next() % 50 == 0 {
                cursor = (next() as usize) % (length + 1);
            }
            if length > 0 && cursor > 0 && next() % 6 == 0 {
                cursor -= 1;
                length -= 1;
                TextEdit {
                    position: cursor,
                    delete: 1,
                    insert: String::new(),
                }
            } else {
                let c = char::from(b'a' + (next() % 26) as u8);
                let e = TextEdit {
                    position: cursor,
                    delete: 0,
                    insert: c.to_string(),
                };
                cursor += 1;
                length += 1;
                e
            }
        })
        .collect()
}

/// Runs in a child process: applies the trace in changes of `batch` edits and
/// persists it, then prints one JSON line.
pub fn child(side: &str, batch: usize, trace: &Path, dir: &Path) -> anyhow::Result<()> {
    let (edits, _) = load_trace(trace)?;
    let (elapsed, chars) = match side {
        "automerge" => bare_automerge(&edits, batch, dir)?,
        "hearth" => tokio::runtime::Runtime::new()?.block_on(through_hearth(&edits, batch, dir))?,
        other => anyhow::bail!("unknown side {other}"),
    };
    let line = json!({
        "ms": elapsed.as_secs_f64() * 1e3,
        "chars": chars,
        "peak_rss_mib": peak_rss_mib(None),
    });
    println!("{line}");
    Ok(())
}

fn bare_automerge(
    edits: &[TextEdit],
    batch: usize,
    dir: &Path,
) -> anyhow::Result<(std::time::Duration, usize)> {
    let started = Instant::now();
    let mut file = std::fs::File::create(dir.join("doc.automerge"))?;
    let mut doc = AutoCommit::new();
    let text = doc.put_object(ROOT, "text", ObjType::Text)?;
    for changes in edits.chunks(batch) {
        for e in changes {
            doc.splice_text(&text, e.position, e.delete as isize, &e.insert)?;
        }
        file.write_all(&doc.save_incremental())?;
    }
    file.sync_all()?;
    let elapsed = started.elapsed();
    Ok((elapsed, doc.text(&text)?.chars().count()))
}

async fn through_hearth(
    edits: &[TextEdit],
    batch: usize,
    dir: &Path,
) -> anyhow::Result<(std::time::Duration, usize)> {
    let node = crate::nodes::start(&dir.join("vault"), false, vec![]).await?;
    let v = node.vault();
    let notes = CollectionName::parse("notes")?;
    let id = RecordId::parse("paper")?;
    v.collections().put(
        &notes,
        &id,
        json!({"title": "paper"}).as_object().context("an object")?,
    )?;
    v.store().commit().await?;
    let started = Instant::now();
    for changes in edits.chunks(batch) {
        anyhow::ensure!(
            v.collections().edit_text(&notes, &id, "text", changes)?,
            "the record exists"
        );
    }
    v.store().commit().await?;
    let elapsed = started.elapsed();
    let record = v
        .collections()
        .get(&notes, &id)?
        .context("the record exists")?;
    let chars = record["text"]
        .as_str()
        .context("text reads as a string")?
        .chars()
        .count();
    node.shutdown().await?;
    Ok((elapsed, chars))
}

fn run_child(
    side: &str,
    batch: usize,
    trace: &Path,
    dir: &Path,
) -> anyhow::Result<(f64, usize, f64)> {
    let out = Command::new(std::env::current_exe()?)
        .args(["child-edit-trace", side, &batch.to_string()])
        .arg(trace)
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the {side} edit-trace process failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value =
        serde_json::from_slice(&out.stdout).context("the child prints one JSON line")?;
    Ok((
        line["ms"].as_f64().context("ms")?,
        line["chars"].as_u64().context("chars")? as usize,
        line["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
    ))
}

pub fn edit_trace(opts: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "edit trace",
        "<= 1.2x bare automerge (time and peak memory)",
    );
    let path = trace_path();
    let (edits, real) = load_trace(&path)?;
    report.notes.push(if real {
        format!(
            "the automerge-perf trace: {} edits from {}",
            edits.len(),
            path.display()
        )
    } else {
        format!(
            "{} was not found: a generated trace of {} edits",
            path.display(),
            edits.len()
        )
    });
    drop(edits);
    let mut ok = Vec::new();
    for (label, batch) in [
        ("one change", usize::MAX),
        ("a change every 100 edits", 100),
    ] {
        let (dir_a, dir_h) = (
            tempfile::tempdir_in(&opts.dir)?,
            tempfile::tempdir_in(&opts.dir)?,
        );
        let (a_ms, a_chars, a_rss) = run_child("automerge", batch, &path, dir_a.path())?;
        let (h_ms, h_chars, h_rss) = run_child("hearth", batch, &path, dir_h.path())?;
        anyhow::ensure!(
            a_chars == h_chars,
            "Hearth's text has {h_chars} characters, bare automerge's {a_chars}"
        );
        report
            .figures
            .push(fig(format!("{label}: Hearth apply+persist"), h_ms, "ms"));
        report
            .figures
            .push(fig(format!("{label}: Hearth peak memory"), h_rss, "MiB"));
        report
            .baseline
            .push(fig(format!("{label}: automerge apply+persist"), a_ms, "ms"));
        report
            .baseline
            .push(fig(format!("{label}: automerge peak memory"), a_rss, "MiB"));
        report.notes.push(format!(
            "{label}: time {:.2}x, peak memory {:.2}x; final text {h_chars} characters on both",
            h_ms / a_ms,
            h_rss / a_rss
        ));
        if batch == usize::MAX {
            report.ratio = Some((
                "Hearth time / automerge time (one change)".into(),
                h_ms / a_ms,
            ));
        }
        ok.push(h_ms / a_ms <= 1.2 && h_rss / a_rss <= 1.2);
    }
    report.judge(&ok);
    Ok(report)
}
