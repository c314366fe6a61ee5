//! Mail import: messages sent to a node in batches as `hearth import mail` sends them
//! (`POST /v1/import/mail`, 1,000 a batch), against the disk work any store of them
//! must do at the least — each message sealed and written to a file of its own, the
//! batch's files fsynced together (8 at a time, as the blob store does), then their
//! directory — in the same run. Then the same mailbox again (every message there
//! already), which is what a resumed import pays for the part that was in.

use std::io::Write;
use std::time::Instant;

use hearth_protocol::mail::{MailItem, encode_batch};
use hearth_protocol::seal::{Binding, NONCE_LEN, SealKey};
use rand::{Rng, SeedableRng};

use crate::Opts;
use crate::nodes::{http_client, owner_token, start};
use crate::report::{Report, fig};

const BATCH: usize = 1_000;

/// Message `n`: about 1.8 KB of text, its own Message-ID.
fn message(n: usize, rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "of", "and", "to", "in", "is", "that", "it", "was", "for", "on", "are", "as",
        "with", "they", "at", "be", "this", "from", "have", "or", "by", "one", "had", "not", "but",
        "what", "all", "were", "when", "we", "there", "can", "an", "your", "which",
    ];
    let mut m = format!(
        "From: Sender {n} <sender{n}@example.org>\nTo: ada@example.org\nSubject: message {n}\n\
         Date: Mon, 1 Jan 2024 10:00:00 +0100\nMessage-ID: <bench{n}@example.org>\n\n"
    );
    for _ in 0..30 {
        let line: Vec<&str> = (0..12)
            .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
            .collect();
        m.push_str(&line.join(" "));
        m.push('\n');
    }
    m.into_bytes()
}

pub async fn mail_import(opts: &Opts) -> anyhow::Result<Report> {
    let count = if opts.quick { 5_000 } else { 20_000 };
    let mut report = Report::new(
        "mail import",
        ">= 2,000 messages/s (issue 26); the ratio to the disk work is reported",
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(26);
    let messages: Vec<Vec<u8>> = (0..count).map(|n| message(n, &mut rng)).collect();
    let bytes: usize = messages.iter().map(Vec::len).sum();

    let dir = tempfile::tempdir_in(&opts.dir)?;
    let node = start(&dir.path().join("vault"), false, vec![]).await?;
    let url = format!("http://{}/v1/import/mail", node.api_addr());
    let token = owner_token(&node)?;
    let http = http_client()?;
    let send_all = || async {
        for batch in messages.chunks(BATCH) {
            let items: Vec<MailItem> = batch
                .iter()
                .map(|bytes| MailItem {
                    folder: "INBOX".into(),
                    flags: vec!["seen".into()],
                    mbox_from: None,
                    bytes: bytes.clone(),
                    view: false,
                })
                .collect();
            http.post(&url)
                .bearer_auth(&token)
                .body(encode_batch(&items))
                .send()
                .await?
                .error_for_status()?;
        }
        anyhow::Ok(())
    };
    let t = Instant::now();
    send_all().await?;
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    send_all().await?;
    let again = t.elapsed().as_secs_f64();
    let stored = node
        .vault()
        .collections()
        .count(&hearth_protocol::CollectionName::parse("mail")?)?;
    node.shutdown().await?;
    anyhow::ensure!(stored == count, "{stored} of {count} messages stored");

    let baseline = disk_work(&opts.dir, &messages)?;
    let rate = count as f64 / first;
    report.figures = vec![
        fig("import", first, "s"),
        fig("import rate", rate, "msg/s"),
        fig("the same again (all there)", again, "s"),
        fig("the same again, rate", count as f64 / again, "msg/s"),
    ];
    report.baseline = vec![
        fig("seal + a file each + fsync a batch", baseline, "s"),
        fig("its rate", count as f64 / baseline, "msg/s"),
    ];
    report.ratio = Some(("import / disk work".into(), first / baseline));
    report.notes.push(format!(
        "{count} messages ({:.1} MB), batches of {BATCH} over HTTP to one in-process node",
        bytes as f64 / 1e6
    ));
    report.judge(&[rate >= 2_000.0]);
    Ok(report)
}

/// Seals each message and writes it to a file of its own; per batch, fsyncs the files
/// (8 at a time) and then the directory. Returns the seconds it took.
fn disk_work(base: &std::path::Path, messages: &[Vec<u8>]) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(base)?;
    let key = SealKey::from_bytes([7; 32]);
    let t = Instant::now();
    for (b, batch) in messages.chunks(BATCH).enumerate() {
        let mut paths = Vec::with_capacity(batch.len());
        for (i, message) in batch.iter().enumerate() {
            let mut nonce = [0u8; NONCE_LEN];
            rand::thread_rng().fill(&mut nonce[..]);
            let name = [b as u8, (i & 0xff) as u8];
            let sealed = key.seal(Binding::new(b"bench", &name), message, nonce);
            let path = dir.path().join(format!("{b}-{i}"));
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&sealed)?;
            paths.push(path);
        }
        std::thread::scope(|s| {
            for lane in 0..8 {
                let paths = &paths;
                s.spawn(move || {
                    for path in paths.iter().skip(lane).step_by(8) {
                        std::fs::File::open(path)?.sync_all()?;
                    }
                    std::io::Result::Ok(())
                });
            }
        });
        std::fs::File::open(dir.path())?.sync_all()?;
    }
    Ok(t.elapsed().as_secs_f64())
}
