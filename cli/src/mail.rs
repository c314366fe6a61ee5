//! `hearth import mail` and `hearth export mail`: an mbox file or a Maildir read here,
//! message by message (bounded memory: one batch at a time), and sent to the node in
//! batches (`hearth_protocol::mail`); and every message written back byte for byte.
//!
//! mbox is read as mboxrd: a line `From ` starts a message, a line `>From `, `>>From `
//! … inside one is unquoted by one `>`, the empty line before the next `From ` line is
//! the separator, not the message's. An export quotes the same way, so an mbox read
//! and written again gives every message the same bytes.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hearth_node::home::Home;
use hearth_protocol::api::{MailFailure, MailImportReport};
use hearth_protocol::mail::{MailItem, encode_batch};
use reqwest::Method;
use serde_json::Value;

use crate::client::Client;
use crate::commands::{note, out, out_json, progress};

/// The most messages, and about the most bytes, one batch carries.
const BATCH_MESSAGES: usize = 1000;
const BATCH_BYTES: usize = 16 << 20;

/// Reads an mbox file message by message (see the module's doc).
pub struct Mbox<R> {
    reader: R,
    /// The `From ` line of the message being read next, if one was met.
    next_from: Option<String>,
    line: Vec<u8>,
    done: bool,
}

impl<R: BufRead> Mbox<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            next_from: None,
            line: Vec::new(),
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for Mbox<R> {
    /// The message's `From ` line (without `From ` and the line end) and its bytes.
    type Item = std::io::Result<(String, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut bytes = Vec::new();
        loop {
            self.line.clear();
            match self.reader.read_until(b'\n', &mut self.line) {
                Err(e) => return Some(Err(e)),
                Ok(0) => {
                    self.done = true;
                    return self
                        .next_from
                        .take()
                        .map(|from| Ok((from, unseparated(bytes))));
                }
                Ok(_) => {}
            }
            if let Some(rest) = self.line.strip_prefix(b"From ") {
                let from = String::from_utf8_lossy(rest)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                match self.next_from.replace(from) {
                    Some(previous) => return Some(Ok((previous, unseparated(bytes)))),
                    // Text before the first `From ` line is not a message.
                    None => continue,
                }
            }
            if self.next_from.is_none() {
                continue;
            }
            let quotes = self.line.iter().take_while(|&&b| b == b'>').count();
            if quotes > 0 && self.line[quotes..].starts_with(b"From ") {
                bytes.extend_from_slice(&self.line[1..]);
            } else {
                bytes.extend_from_slice(&self.line);
            }
        }
    }
}

/// A message's bytes without the empty line that separates it from the next one.
fn unseparated(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.ends_with(b"\n\n") || bytes.ends_with(b"\r\n\n") {
        bytes.pop();
    }
    bytes
}

/// Writes one message to an mbox: its `From ` line, its lines quoted (mboxrd), and the
/// separating empty line.
pub fn write_mbox_message(out: &mut impl Write, from: &str, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(b"From ")?;
    out.write_all(from.as_bytes())?;
    out.write_all(b"\n")?;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let quotes = line.iter().take_while(|&&b| b == b'>').count();
        if line[quotes..].starts_with(b"From ") {
            out.write_all(b">")?;
        }
        out.write_all(line)?;
    }
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.write_all(b"\n")
}

/// The flags an mbox message's `Status:` and `X-Status:` headers give (as mutt and
/// Thunderbird write them).
fn mbox_flags(bytes: &[u8]) -> Vec<String> {
    let mut flags = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => continue,
        };
        let value = String::from_utf8_lossy(value);
        let value = value.trim();
        let letters: &[(char, &str)] = if name.eq_ignore_ascii_case(b"status") {
            &[('R', "seen")]
        } else if name.eq_ignore_ascii_case(b"x-status") {
            &[
                ('A', "answered"),
                ('F', "flagged"),
                ('D', "deleted"),
                ('T', "draft"),
            ]
        } else {
            continue;
        };
        for (letter, flag) in letters {
            if value.contains(*letter) && !flags.iter().any(|f| f == flag) {
                flags.push((*flag).to_owned());
            }
        }
    }
    flags.sort();
    flags
}

fn maildir_flags(flags: &[mail_parser::mailbox::maildir::Flag]) -> Vec<String> {
    use mail_parser::mailbox::maildir::Flag;
    let mut out: Vec<String> = flags
        .iter()
        .map(|f| {
            match f {
                Flag::Passed => "forwarded",
                Flag::Replied => "answered",
                Flag::Seen => "seen",
                Flag::Trashed => "deleted",
                Flag::Draft => "draft",
                Flag::Flagged => "flagged",
            }
            .to_owned()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Sends messages to the node batch by batch and adds up what it says.
struct Sender<'a> {
    home: &'a Home,
    client: &'a Client,
    path: String,
    batch: Vec<MailItem>,
    bytes: usize,
    /// Messages in the batches sent before the current one.
    sent: usize,
    /// The batch sent and not yet answered, if any.
    in_flight: Option<InFlight>,
    report: MailImportReport,
    bar: Option<indicatif::ProgressBar>,
}

/// A batch on its way: where it starts in the import, its size, its request. One at a
/// time: the next batch is read while the node stores the one on its way. Two (the
/// node storing one batch's blobs while it writes the records of the one before) was
/// slower on 2 cores: 20,000 messages in 9.4–10.7 s against 7.8–8.3 s
/// (docs/BENCHMARKS.md, mail import).
struct InFlight {
    first: usize,
    bytes: usize,
    answer: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl Sender<'_> {
    async fn add(&mut self, mut item: MailItem) -> anyhow::Result<()> {
        fit_head(&mut item);
        self.bytes += item.bytes.len();
        self.batch.push(item);
        if self.batch.len() >= BATCH_MESSAGES || self.bytes >= BATCH_BYTES {
            self.dispatch().await?;
        }
        Ok(())
    }

    /// The state an earlier import stored at `path`, if any.
    async fn state(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let answer = self
            .client
            .request(Method::GET, path)
            .send()
            .await
            .context("the node did not answer")?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let answer = answer
            .error_for_status()
            .context("the node refused to say where the last import stopped")?;
        Ok(Some(
            answer
                .json()
                .await
                .context("the node's answer is not JSON")?,
        ))
    }

    async fn set_state(&self, path: &str, state: Value) -> anyhow::Result<()> {
        let request = self.client.request(Method::PUT, path).json(&state);
        self.client.send(self.home, request).await?;
        Ok(())
    }

    /// Sends the current batch without waiting for its answer, once the one before
    /// it is answered.
    async fn dispatch(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.wait().await?;
        let body = encode_batch(&self.batch);
        let request = self
            .client
            .request(Method::POST, &self.path)
            .header("content-type", "application/octet-stream")
            .body(body);
        self.in_flight = Some(InFlight {
            first: self.sent,
            bytes: self.bytes,
            answer: tokio::spawn(request.send()),
        });
        self.sent += self.batch.len();
        self.batch.clear();
        self.bytes = 0;
        Ok(())
    }

    /// Waits for the answer to the batch on its way, if any, and counts it.
    async fn wait(&mut self) -> anyhow::Result<()> {
        let Some(batch) = self.in_flight.take() else {
            return Ok(());
        };
        let answered = batch.first;
        let sent = batch
            .answer
            .await
            .context("the request to the node stopped")?;
        let report: MailImportReport = self
            .client
            .answer(self.home, sent)
            .await
            .with_context(|| format!("after {answered} messages were imported"))?
            .json()
            .await
            .context("the node's answer is not what this version of the CLI expects")?;
        self.report.imported += report.imported;
        self.report.duplicates += report.duplicates;
        self.report
            .failed
            .extend(report.failed.into_iter().map(|f| MailFailure {
                index: f.index + batch.first,
                reason: f.reason,
            }));
        if let Some(bar) = &self.bar {
            bar.inc(batch.bytes as u64);
        }
        Ok(())
    }

    /// Sends what is left and waits until the node has answered for every batch.
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.dispatch().await?;
        self.wait().await
    }
}

/// Makes a message's head fit what a batch may carry, so that one odd message (a
/// Maildir folder whose name holds a control character, an mbox `From ` line of 2 KB,
/// a server's 100-byte keyword) does not stop an import: control characters become
/// spaces, a name or line too long is cut (on a character), a flag too long is dropped,
/// flags beyond the most a message carries are dropped, and an empty folder name is
/// `INBOX`. The message's bytes are never touched.
fn fit_head(item: &mut MailItem) {
    use hearth_protocol::mail::{MAX_FLAG_LEN, MAX_FLAGS, MAX_FOLDER_LEN, MAX_MBOX_FROM_LEN};
    fn one_line(text: &str) -> String {
        let line: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        line.trim().to_owned()
    }
    fn cut(mut text: String, max: usize) -> String {
        if text.len() > max {
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }
    item.folder = cut(one_line(&item.folder), MAX_FOLDER_LEN);
    if item.folder.is_empty() {
        item.folder = "INBOX".into();
    }
    item.flags = std::mem::take(&mut item.flags)
        .iter()
        .map(|f| one_line(f))
        .filter(|f| !f.is_empty() && f.len() <= MAX_FLAG_LEN)
        .take(MAX_FLAGS)
        .collect();
    if let Some(from) = item.mbox_from.take() {
        item.mbox_from = Some(cut(one_line(&from), MAX_MBOX_FROM_LEN));
    }
}

/// Where `hearth import mail` reads from, and how.
pub struct Source {
    /// An mbox file, a Maildir, or `imap[s]://…`.
    pub source: String,
    pub folder: Option<String>,
    pub password_file: Option<PathBuf>,
    /// IMAP: every message again, not only the new ones.
    pub full: bool,
}

/// `hearth import mail SOURCE [--into C] [--folder F] [--password-file F] [--full]`.
pub async fn import(
    home: &Home,
    json: bool,
    client: &Client,
    collection: &str,
    from: Source,
) -> anyhow::Result<()> {
    let Source {
        source,
        folder,
        password_file,
        full,
    } = from;
    let source = source.as_str();
    let mut sender = Sender {
        home,
        client,
        path: format!("/v1/import/{}", crate::commands::seg(collection)),
        batch: Vec::new(),
        bytes: 0,
        sent: 0,
        in_flight: None,
        report: MailImportReport::default(),
        bar: None,
    };
    if source.starts_with("imap://") || source.starts_with("imaps://") {
        let password_file = password_file.context(
            "an IMAP import needs --password-file FILE (the password on its first line)",
        )?;
        imap(&mut sender, source, &password_file, folder, full).await?;
        return finish(sender, json, collection).await;
    }
    if password_file.is_some() || full {
        bail!("--password-file and --full are for an IMAP import");
    }
    let path = Path::new(source);
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {source}"))?;
    if meta.is_dir() {
        let folders = mail_parser::mailbox::maildir::FolderIterator::new(path, Some("."))
            .with_context(|| format!("{source} is not a Maildir (no cur/ and new/)"))?;
        for messages in folders {
            let messages = messages.with_context(|| format!("cannot read {source}"))?;
            let name = folder
                .clone()
                .unwrap_or_else(|| messages.name().unwrap_or("INBOX").to_owned());
            for message in messages {
                let message =
                    message.with_context(|| format!("cannot read a message in {source}"))?;
                let flags = maildir_flags(message.flags());
                sender
                    .add(MailItem {
                        folder: name.clone(),
                        flags,
                        mbox_from: None,
                        bytes: message.unwrap_contents(),
                        view: false,
                    })
                    .await?;
            }
        }
    } else {
        sender.bar = progress(json, meta.len(), "importing");
        let name = folder.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "INBOX".to_owned())
        });
        let file = std::fs::File::open(path).with_context(|| format!("cannot read {source}"))?;
        for message in Mbox::new(std::io::BufReader::with_capacity(1 << 20, file)) {
            let (from, bytes) = message.with_context(|| format!("cannot read {source}"))?;
            sender
                .add(MailItem {
                    folder: name.clone(),
                    flags: mbox_flags(&bytes),
                    mbox_from: Some(from),
                    bytes,
                    view: false,
                })
                .await?;
        }
    }
    finish(sender, json, collection).await
}

/// Sends what is left and says what the import did.
async fn finish(mut sender: Sender<'_>, json: bool, collection: &str) -> anyhow::Result<()> {
    sender.flush().await?;
    if let Some(bar) = sender.bar.take() {
        bar.finish_and_clear();
    }
    let report = sender.report;
    if json {
        return out_json(&report);
    }
    out(format!(
        "{} new, {} there already in {collection}",
        report.imported, report.duplicates
    ))?;
    for failed in &report.failed {
        note(format!(
            "message {} not imported: {}",
            failed.index + 1,
            failed.reason
        ));
    }
    Ok(())
}

/// The flags of an IMAP message, as names (`\\Recent` is not kept: it says nothing
/// about the message).
fn imap_flags<'a>(flags: impl Iterator<Item = async_imap::types::Flag<'a>>) -> Vec<String> {
    use async_imap::types::Flag;
    let mut out: Vec<String> = flags
        .filter_map(|f| match f {
            Flag::Seen => Some("seen".to_owned()),
            Flag::Answered => Some("answered".to_owned()),
            Flag::Flagged => Some("flagged".to_owned()),
            Flag::Deleted => Some("deleted".to_owned()),
            Flag::Draft => Some("draft".to_owned()),
            Flag::Custom(k) if k.eq_ignore_ascii_case("$Forwarded") => Some("forwarded".to_owned()),
            Flag::Custom(k) if !k.starts_with('\\') && !k.is_empty() && k.len() <= 64 => {
                Some(k.to_string())
            }
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Where an IMAP import goes: `imap[s]://USER@HOST[:PORT][/FOLDER]`.
struct ImapSource {
    tls: bool,
    host: String,
    port: u16,
    user: String,
    /// `None`: every folder.
    folder: Option<String>,
}

fn imap_source(source: &str) -> anyhow::Result<ImapSource> {
    let url = reqwest::Url::parse(source)
        .with_context(|| format!("{source} is not an imap:// or imaps:// address"))?;
    let tls = url.scheme() == "imaps";
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .with_context(|| format!("{source} names no server"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(url.username());
    if user.is_empty() {
        bail!("{source} names no user: imap[s]://USER@HOST/FOLDER");
    }
    let folder = decode(url.path().trim_start_matches('/'));
    // The password crosses the network: in clear only to this machine.
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !tls && !local {
        bail!("plain imap:// sends the password in clear: use imaps:// (TLS) for {host}");
    }
    Ok(ImapSource {
        tls,
        port: url.port().unwrap_or(if tls { 993 } else { 143 }),
        host,
        user,
        folder: (!folder.is_empty()).then_some(folder),
    })
}

/// Imports one folder of an IMAP server, or every folder: each message's bytes
/// (`BODY.PEEK[]`, which leaves it unread) and flags. A message in several folders
/// (Gmail's labels, an All Mail folder) becomes one record with all of them.
async fn imap(
    sender: &mut Sender<'_>,
    source: &str,
    password_file: &Path,
    folder_name: Option<String>,
    full: bool,
) -> anyhow::Result<()> {
    let at = imap_source(source)?;
    let password = std::fs::read_to_string(password_file)
        .with_context(|| format!("cannot read {}", password_file.display()))?;
    let password = password.lines().next().unwrap_or("").to_owned();
    let tcp = tokio::net::TcpStream::connect((at.host.as_str(), at.port))
        .await
        .with_context(|| format!("cannot reach {}:{}", at.host, at.port))?;
    if at.tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(at.host.clone())
            .with_context(|| format!("{} is not a server name", at.host))?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {} failed", at.host))?;
        imap_session(
            sender,
            async_imap::Client::new(stream),
            &at,
            &password,
            folder_name,
            full,
        )
        .await
    } else {
        imap_session(
            sender,
            async_imap::Client::new(tcp),
            &at,
            &password,
            folder_name,
            full,
        )
        .await
    }
}

async fn imap_session<T>(
    sender: &mut Sender<'_>,
    mut client: async_imap::Client<T>,
    at: &ImapSource,
    password: &str,
    folder_name: Option<String>,
    full: bool,
) -> anyhow::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    use futures::TryStreamExt;
    client
        .read_response()
        .await
        .context("the server sent no greeting")?
        .context("the server closed the connection")?;
    let mut session = client
        .login(&at.user, password)
        .await
        .map_err(|(e, _)| anyhow::anyhow!("the server refused the login of {}: {e}", at.user))?;
    // Flags changed since the last import come along where the server offers
    // CONDSTORE (RFC 7162): it says which messages changed since a number it gave.
    let capabilities = session
        .capabilities()
        .await
        .context("cannot ask the server what it offers")?;
    let condstore = capabilities.has_str("CONDSTORE") && capabilities.has_str("ENABLE");
    if condstore {
        session
            .run_command_and_check_ok("ENABLE CONDSTORE")
            .await
            .context("the server refused ENABLE CONDSTORE")?;
    }
    // The folder named, or every folder the server lists (special-use views last).
    let pattern = at.folder.clone().unwrap_or_else(|| "*".to_owned());
    let names: Vec<async_imap::types::Name> = session
        .list(Some(""), Some(&pattern))
        .await
        .context("cannot list the folders")?
        .try_collect()
        .await
        .context("cannot list the folders")?;
    let mut folders: Vec<ImapFolder> = names
        .iter()
        .filter_map(|n| ImapFolder::of(n.name(), n.attributes(), at.folder.is_some()))
        .collect();
    if let Some(folder) = &at.folder
        && folders.is_empty()
    {
        // Not listed (some servers list nothing for a pattern): opened as named.
        folders.push(ImapFolder {
            name: folder.clone(),
            recorded: folder.clone(),
            view: false,
        });
    }
    folders.sort_by_key(|f| f.view);
    for ImapFolder {
        name: folder,
        recorded,
        view,
    } in folders
    {
        let mailbox = session
            .examine(&folder)
            .await
            .with_context(|| format!("cannot open folder {folder}"))?;
        if mailbox.exists == 0 {
            continue;
        }
        let name = folder_name.clone().unwrap_or_else(|| recorded.clone());
        // Where the last import of this folder stopped: only later UIDs are fetched,
        // while the folder's UIDVALIDITY says they still name the same messages.
        let key = {
            let source = format!(
                "imap\u{0}{}\u{0}{}\u{0}{}\u{0}{folder}",
                at.host, at.port, at.user
            );
            blake3::hash(source.as_bytes()).to_hex()[..32].to_owned()
        };
        let validity = mailbox.uid_validity.unwrap_or(0);
        let state_path = format!("{}/state/{key}", sender.path);
        let state = match full {
            true => None,
            false => sender.state(&state_path).await?,
        };
        let state = state.filter(|s| s["uidvalidity"] == validity);
        let from = state
            .as_ref()
            .and_then(|s| s["next_uid"].as_u64())
            .unwrap_or(1)
            .max(1);
        let modseq = mailbox.highest_modseq.filter(|_| condstore);
        let since = state
            .as_ref()
            .and_then(|s| s["modseq"].as_u64())
            .filter(|&since| condstore && from > 1 && modseq != Some(since));
        if let Some(since) = since {
            // Messages imported before whose flags changed: fetched again, their
            // records take the new flags (as when a folder is imported again).
            fetch_folder(
                &mut session,
                sender,
                &folder,
                (
                    format!("1:{}", from - 1),
                    format!("(UID FLAGS BODY.PEEK[]) (CHANGEDSINCE {since})"),
                ),
                (&name, view),
                1,
            )
            .await?;
        }
        // `N:*` always names the last message, also when its UID is below N.
        let next_uid = fetch_folder(
            &mut session,
            sender,
            &folder,
            (format!("{from}:*"), "(UID FLAGS BODY.PEEK[])".to_owned()),
            (&name, view),
            from,
        )
        .await?;
        // Stored only once the node has every message up to it.
        sender.flush().await?;
        sender
            .set_state(
                &state_path,
                serde_json::json!({"uidvalidity": validity, "next_uid": next_uid, "modseq": modseq}),
            )
            .await?;
    }
    let _ = session.logout().await;
    Ok(())
}

/// Fetches the messages `request` names (a UID set and a FETCH query) of `folder`,
/// opened, and sends those with a UID of at least `min_uid` as found in `recorded`
/// (its name in the vault, and whether it is a view). Returns the UID after the
/// highest one sent, or `min_uid` if none was.
async fn fetch_folder<T>(
    session: &mut async_imap::Session<T>,
    sender: &mut Sender<'_>,
    folder: &str,
    request: (String, String),
    recorded: (&str, bool),
    min_uid: u64,
) -> anyhow::Result<u64>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    use futures::TryStreamExt;
    let (set, query) = request;
    let mut fetches = session
        .uid_fetch(set, query)
        .await
        .with_context(|| format!("cannot read folder {folder}"))?;
    let mut next_uid = min_uid;
    while let Some(fetch) = fetches
        .try_next()
        .await
        .with_context(|| format!("reading folder {folder} broke off"))?
    {
        let uid = u64::from(fetch.uid.unwrap_or(0));
        let Some(body) = fetch.body().filter(|_| uid >= min_uid) else {
            continue;
        };
        next_uid = next_uid.max(uid + 1);
        sender
            .add(MailItem {
                folder: recorded.0.to_owned(),
                flags: imap_flags(fetch.flags()),
                mbox_from: None,
                bytes: body.to_vec(),
                view: recorded.1,
            })
            .await?;
    }
    Ok(next_uid)
}

/// An IMAP folder to import: its name on the server, the name its messages are
/// recorded under, and whether it is a view of other folders.
#[derive(Debug, PartialEq, Eq)]
struct ImapFolder {
    name: String,
    recorded: String,
    view: bool,
}

impl ImapFolder {
    /// How a listed folder is imported (RFC 6154 special use): a sent, drafts, junk,
    /// trash or archive folder under that name in English whatever the server calls
    /// it ("Gesendet", "[Gmail]/Sent Mail"), so that two servers' folders meet; a
    /// folder of all messages (Gmail's "All Mail") as a view whose messages new to the
    /// vault are archived ones; a folder of flagged messages (Gmail's "Starred") only
    /// when asked for by name, since each of its messages is in another folder too.
    /// `None`: not imported (it cannot be opened, or it is such a view).
    fn of(
        name: &str,
        attributes: &[async_imap::types::NameAttribute<'_>],
        named: bool,
    ) -> Option<Self> {
        use async_imap::types::NameAttribute as A;
        let mut folder = ImapFolder {
            name: name.to_owned(),
            recorded: name.to_owned(),
            view: false,
        };
        for attribute in attributes {
            let (recorded, view) = match attribute {
                A::NoSelect => return None,
                A::Flagged if !named => return None,
                A::Flagged => ("Flagged", true),
                A::All => ("Archive", true),
                A::Archive => ("Archive", false),
                A::Drafts => ("Drafts", false),
                A::Junk => ("Junk", false),
                A::Sent => ("Sent", false),
                A::Trash => ("Trash", false),
                _ => continue,
            };
            folder.recorded = recorded.to_owned();
            folder.view = view;
        }
        Some(folder)
    }
}

/// One message to export: its record and its bytes' blob.
struct Exported {
    blob: String,
    mbox_from: String,
    /// Every folder it is in (at least one); a Maildir gets a copy in each.
    folders: Vec<String>,
    flags: Vec<String>,
    id: String,
}

/// The records an export reads at a time.
const EXPORT_PAGE: usize = 1000;

/// What an export writes of a mail record (its date first, to sort by), if it names
/// its message's blob.
fn exported(record: &Value) -> Option<(String, Exported)> {
    let text = |k: &str| record.get(k).and_then(Value::as_str).map(str::to_owned);
    let blob = text("blob")?;
    let list = |k: &str| -> Vec<String> {
        record
            .get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut folders = list("folders");
    if folders.is_empty() {
        folders.push("INBOX".into());
    }
    Some((
        text("date").unwrap_or_default(),
        Exported {
            blob,
            mbox_from: text("mbox_from")
                .unwrap_or_else(|| "MAILER-DAEMON Thu Jan  1 00:00:00 1970".into()),
            folders,
            flags: list("flags"),
            id: text("id").unwrap_or_default(),
        },
    ))
}

/// `hearth export mail [-o FILE.mbox | --maildir DIR] [--from C]`.
pub async fn export(
    home: &Home,
    json: bool,
    client: &Client,
    collection: &str,
    output: Option<PathBuf>,
    maildir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let path = format!(
        "/v1/collections/{}/records",
        crate::commands::seg(collection)
    );
    // Page by page (the node reads each page from its record index, without loading
    // the collection), keeping of each record only what the export writes.
    let mut messages: Vec<(String, Exported)> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut request = client
            .request(Method::GET, &path)
            .query(&[("limit", EXPORT_PAGE.to_string())]);
        if let Some(after) = &after {
            request = request.query(&[("after", after)]);
        }
        let page: Vec<Value> = client.json(home, request).await?;
        let full = page.len() == EXPORT_PAGE;
        after = page
            .last()
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        messages.extend(page.iter().filter_map(exported));
        if !full || after.is_none() {
            break;
        }
    }
    messages.sort_by(|a, b| (&a.0, &a.1.id).cmp(&(&b.0, &b.1.id)));
    let mut mbox: Box<dyn Write> = match (&output, &maildir) {
        (Some(file), None) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(file)
                .with_context(|| format!("cannot write {}", file.display()))?,
        )),
        (None, Some(_)) => Box::new(std::io::sink()),
        (None, None) if json => bail!("with --json, give -o FILE.mbox or --maildir DIR"),
        (None, None) => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        (Some(_), Some(_)) => bail!("give -o FILE.mbox or --maildir DIR, not both"),
    };
    let mut bytes_out = 0u64;
    for (_, message) in &messages {
        let answer = client
            .send(
                home,
                client.request(Method::GET, &format!("/v1/blobs/{}", message.blob)),
            )
            .await?;
        let bytes = answer
            .bytes()
            .await
            .with_context(|| format!("message {} broke off", message.id))?;
        bytes_out += bytes.len() as u64;
        match &maildir {
            Some(dir) => write_maildir_message(dir, message, &bytes)?,
            None => write_mbox_message(&mut mbox, &message.mbox_from, &bytes)
                .context("cannot write the mbox")?,
        }
    }
    mbox.flush().context("cannot write the mbox")?;
    drop(mbox);
    let target = output.or(maildir).map(|p| p.display().to_string());
    if json {
        return out_json(&serde_json::json!({
            "collection": collection,
            "messages": messages.len(),
            "bytes": bytes_out,
            "path": target,
        }));
    }
    if let Some(target) = target {
        note(format!(
            "wrote {} messages ({bytes_out} bytes) to {target}",
            messages.len()
        ));
    }
    Ok(())
}

/// Writes a message into `DIR` as Maildir++: INBOX at the top, another folder in
/// `.NAME` (a `/` in a folder name becomes `.`), the flags in the file name.
fn write_maildir_message(dir: &Path, message: &Exported, bytes: &[u8]) -> anyhow::Result<()> {
    for folder in &message.folders {
        write_maildir_copy(dir, folder, message, bytes)?;
    }
    Ok(())
}

/// Writes one copy of `message` into `folder` of the Maildir++ tree at `dir`.
fn write_maildir_copy(
    dir: &Path,
    folder: &str,
    message: &Exported,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let folder = if folder.eq_ignore_ascii_case("INBOX") {
        dir.to_path_buf()
    } else {
        let safe: String = folder
            .chars()
            .map(|c| if c == '/' { '.' } else { c })
            .filter(|c| !c.is_control())
            .collect();
        dir.join(format!(".{}", safe.trim_start_matches('.')))
    };
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(folder.join(sub))
            .with_context(|| format!("cannot write {}", folder.display()))?;
    }
    let mut letters: Vec<char> = message
        .flags
        .iter()
        .filter_map(|f| match f.as_str() {
            "draft" => Some('D'),
            "flagged" => Some('F'),
            "forwarded" => Some('P'),
            "answered" => Some('R'),
            "seen" => Some('S'),
            "deleted" => Some('T'),
            _ => None,
        })
        .collect();
    letters.sort_unstable();
    letters.dedup();
    let name = format!(
        "{}.hearth:2,{}",
        message.id,
        letters.iter().collect::<String>()
    );
    let path = folder.join("cur").join(name);
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_odd_head_is_made_to_fit_and_its_message_kept_whole() {
        let mut item = MailItem {
            folder: "Lists\u{7}/é".repeat(100),
            flags: (0..40)
                .map(|i| format!("k{i}"))
                .chain(["x".repeat(100), "a\nb".into(), "\t".into()])
                .rev()
                .collect(),
            mbox_from: Some(format!("someone@example.org {}\r", "é".repeat(600))),
            bytes: b"Subject: odd\r\n\r\nbody\r\n".to_vec(),
            view: false,
        };
        // Refused as it is: one such message stopped a whole import.
        let batch = hearth_protocol::mail::encode_batch(std::slice::from_ref(&item));
        assert!(hearth_protocol::mail::decode_batch(&batch).is_err());
        let bytes = item.bytes.clone();
        fit_head(&mut item);
        let batch = hearth_protocol::mail::encode_batch(std::slice::from_ref(&item));
        let read = hearth_protocol::mail::decode_batch(&batch).unwrap();
        assert_eq!(read[0].bytes, bytes);
        assert!(read[0].folder.starts_with("Lists /é"), "{}", read[0].folder);
        assert_eq!(read[0].flags.len(), 32);
        assert_eq!(read[0].flags[0], "a b");
        assert!(!read[0].flags.iter().any(|f| f.starts_with("xx")));
        assert!(read[0].mbox_from.as_ref().unwrap().len() <= 1024);
        let mut empty = MailItem {
            folder: "\u{1}".into(),
            ..item
        };
        fit_head(&mut empty);
        assert_eq!(empty.folder, "INBOX");
    }

    fn read(mbox: &[u8]) -> Vec<(String, Vec<u8>)> {
        Mbox::new(mbox).map(Result::unwrap).collect()
    }

    #[test]
    fn an_mbox_reads_and_writes_back_the_same_messages() {
        let one = b"Subject: a\n\nFrom here on\n>From quoted\nbye\n".to_vec();
        let two = b"Subject: b\r\n\r\nno newline at the end".to_vec();
        let three = b"Subject: c\n\n\n\nblank lines at the end\n\n".to_vec();
        let mut file = Vec::new();
        for (n, m) in [&one, &two, &three].iter().enumerate() {
            write_mbox_message(&mut file, &format!("sender{n} Mon Jan  1 00:00:00 2024"), m)
                .unwrap();
        }
        let text = String::from_utf8_lossy(&file).to_string();
        assert!(text.contains("\n>From here on\n>>From quoted\n"), "{text}");
        let back = read(&file);
        assert_eq!(back.len(), 3);
        assert_eq!(back[0], ("sender0 Mon Jan  1 00:00:00 2024".into(), one));
        // A message without a line end at its end gains one (mbox has no other way).
        let mut two_ended = two.clone();
        two_ended.push(b'\n');
        assert_eq!(back[1].1, two_ended);
        assert_eq!(back[2].1, three);
        // Written again: the same file.
        let mut again = Vec::new();
        for (from, bytes) in &back {
            write_mbox_message(&mut again, from, bytes).unwrap();
        }
        let mut expected = Vec::new();
        for (from, bytes) in &back {
            write_mbox_message(&mut expected, from, bytes).unwrap();
        }
        assert_eq!(again, expected);
        assert_eq!(read(&again), back);
        // Text before the first From line is not a message; an empty file has none.
        assert_eq!(read(b"junk\nFrom x\nSubject: y\n\nz\n").len(), 1);
        assert!(read(b"").is_empty());
    }

    #[test]
    fn imap_addresses_are_read_and_plain_imap_stays_on_this_machine() {
        let at = imap_source("imaps://me%40example.org@mail.example.org/Sent%20Items").unwrap();
        assert!(at.tls);
        assert_eq!((at.host.as_str(), at.port), ("mail.example.org", 993));
        assert_eq!(at.user, "me@example.org");
        assert_eq!(at.folder.as_deref(), Some("Sent Items"));
        let at = imap_source("imap://me@127.0.0.1:1143").unwrap();
        assert_eq!((at.port, at.folder), (1143, None));
        assert!(imap_source("imap://me@[::1]/INBOX").is_ok());
        let err = imap_source("imap://me@mail.example.org/INBOX")
            .err()
            .unwrap();
        assert!(err.to_string().contains("imaps://"), "{err}");
        assert!(
            imap_source("imaps://mail.example.org/INBOX").is_err(),
            "no user"
        );
        assert!(imap_source("imaps://").is_err());
    }

    #[test]
    fn mbox_flags_come_from_status_headers() {
        let m = b"Status: RO\nX-Status: AF\nSubject: x\n\nStatus: D\n";
        assert_eq!(mbox_flags(m), vec!["answered", "flagged", "seen"]);
        assert!(mbox_flags(b"Subject: x\n\nbody").is_empty());
    }
}
