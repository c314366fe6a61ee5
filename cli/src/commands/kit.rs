//! `hearth recovery-kit`: the secret that opens every key of the vault, made here (in
//! the CLI, never on the node), shown once, and registered with the node by its public
//! keys (`POST /v1/recovery`).

use std::path::PathBuf;

use hearth_node::epochs::Epoch;
use hearth_node::recovery::{KitHost, RecoverySecret, Share};
use hearth_protocol::api::{KitInfo, KitRequest, StatusResponse};
use zeroize::Zeroizing;

use super::*;

/// "K-of-N" → (K, N).
fn parse_shares(text: &str) -> anyhow::Result<(u8, u8)> {
    let parsed = text
        .split_once("-of-")
        .and_then(|(k, n)| Some((k.trim().parse::<u8>().ok()?, n.trim().parse::<u8>().ok()?)));
    match parsed {
        Some((k, n)) if (2..=n).contains(&k) && n <= 16 => Ok((k, n)),
        _ => bail!("--shares takes K-of-N with 2 <= K <= N <= 16, such as 2-of-3 (got {text:?})"),
    }
}

pub(super) async fn make(
    home: &Home,
    json: bool,
    client: &Client,
    output: Option<PathBuf>,
    force: bool,
    shares: Option<String>,
    passphrase_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    if passphrase_file.is_some() && output.is_none() {
        bail!("--passphrase-file seals the kit's file: give it with -o FILE");
    }
    let split = shares.as_deref().map(parse_shares).transpose()?;
    let passphrase = passphrase_file
        .as_deref()
        .map(Passphrase::from_file)
        .transpose()?;
    if let Some(path) = &output
        && path.exists()
        && !force
    {
        bail!("{} exists; give --force to replace it", path.display());
    }
    let status: StatusResponse = client
        .json(home, client.request(Method::GET, "/v1/status"))
        .await?;
    let secret = RecoverySecret::generate();
    let kit = secret.public();
    // Everything that can fail before the node counts the kit does: the file is
    // written first, so a kit the node seals to always exists somewhere.
    let shares = split
        .map(|(k, n)| secret.split(k, n))
        .transpose()?
        .unwrap_or_default();
    let mut written = None;
    if let Some(path) = &output {
        let hosts = vault_hosts(home, client).await?;
        let file = secret.to_file(
            &status.vault_id,
            hearth_node::clock::now_unix(),
            &hosts,
            passphrase.as_ref(),
        )?;
        written = Some(write_kit_file(path, &file)?);
    }
    let request = KitRequest {
        kit: kit.id.clone(),
        exchange: data_encoding::BASE64.encode(&kit.exchange),
        owner: data_encoding::BASE64.encode(&kit.owner),
        handle: data_encoding::HEXLOWER.encode(&kit.handle),
    };
    let info: KitInfo = client
        .json(
            home,
            client.request(Method::POST, "/v1/recovery").json(&request),
        )
        .await?;
    let words = (shares.is_empty() && passphrase.is_none()).then(|| secret.words());
    let share_texts: Vec<Zeroizing<String>> = shares.iter().map(|s| s.to_text()).collect();
    if json {
        let mut out = serde_json::json!({
            "kit": kit.id,
            "epoch": info.epoch,
            "epochs_sealed": info.epochs_sealed,
        });
        if let Some(words) = &words {
            out["words"] = Value::String(words.to_string());
        }
        if !share_texts.is_empty() {
            out["shares"] = share_texts
                .iter()
                .map(|s| Value::String(s.to_string()))
                .collect();
        }
        if let Some((file, svg)) = &written {
            out["file"] = Value::String(file.display().to_string());
            out["qr"] = Value::String(svg.display().to_string());
        }
        return out_json(&out);
    }
    out(format!(
        "recovery kit {} (epoch {}: every epoch key of the vault is sealed to it)",
        kit.id, info.epoch
    ))?;
    if let Some(words) = &words {
        out(String::new())?;
        for (i, line) in words.split(' ').collect::<Vec<_>>().chunks(6).enumerate() {
            out(format!("  {:>2}. {}", i * 6 + 1, line.join(" ")))?;
        }
        out(String::new())?;
    }
    for share in &share_texts {
        out(share.to_string())?;
    }
    if let Some((file, svg)) = &written {
        note(format!(
            "Written to {} and, as a QR code to print, {}{}.",
            file.display(),
            svg.display(),
            if passphrase.is_some() {
                " (sealed under the passphrase: keep both, apart)"
            } else {
                ""
            }
        ));
    }
    note(
        "Write it down or print it, and keep it away from this computer: whoever holds it opens every key of the vault. It is shown only now. A new kit replaces this one for everything made afterwards.",
    );
    if !share_texts.is_empty() {
        note(
            "Give each share to a different person or place: any two bring the kit back; one alone reveals nothing.",
        );
    }
    note(
        "With a backup host (`hearth backup add`), the kit brings the whole vault back onto an empty machine: `hearth recover --kit FILE --host ADDR`.",
    );
    Ok(())
}

/// The vault's backup hosts as a kit file names them (read from `_backup`, without
/// reaching them).
async fn vault_hosts(home: &Home, client: &Client) -> anyhow::Result<Vec<KitHost>> {
    let records: Vec<Value> = client
        .json(
            home,
            client.request(Method::GET, "/v1/collections/_backup/records"),
        )
        .await?;
    Ok(records
        .iter()
        .filter_map(|r| {
            Some(KitHost {
                peer: r.get("peer")?.as_str()?.to_owned(),
                addrs: r
                    .get("addrs")?
                    .as_array()?
                    .iter()
                    .filter_map(|a| Some(a.as_str()?.to_owned()))
                    .collect(),
            })
        })
        .collect())
}

/// Writes a kit file (mode 0600) and its QR code beside it (`FILE.svg`); returns both
/// paths.
fn write_kit_file(path: &std::path::Path, file: &[u8]) -> anyhow::Result<(PathBuf, PathBuf)> {
    hearth_node::home::write_file_atomic(path, file, 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let svg_path = PathBuf::from(format!("{}.svg", path.display()));
    let qr = qrcode::QrCode::new(file)
        .context("the kit does not fit a QR code")?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(600, 600)
        .build();
    hearth_node::home::write_file_atomic(&svg_path, qr.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    Ok((path.to_path_buf(), svg_path))
}

/// `hearth recovery-kit --hosts FILE`: the vault's hosts written into a kit file it
/// keeps, its secret untouched. Only the vault's current kit: an older one does not
/// find the vault on its hosts any more.
pub(super) async fn write_hosts(
    home: &Home,
    json: bool,
    client: &Client,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let bytes = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let file: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a kit file (JSON)", path.display()))?;
    let status: StatusResponse = client
        .json(home, client.request(Method::GET, "/v1/status"))
        .await?;
    let info: KitInfo = client
        .json(home, client.request(Method::GET, "/v1/recovery"))
        .await?;
    let named = |field: &str| file.get(field).and_then(Value::as_str).unwrap_or_default();
    if named("vault") != status.vault_id {
        bail!(
            "{} is a kit of another vault ({}); this one is {}",
            path.display(),
            named("vault"),
            status.vault_id
        );
    }
    if info.kit.as_deref() != Some(named("kit")) {
        bail!(
            "{} holds kit {}, which is not the vault's recovery kit ({}): the hosts keep the vault under the current kit; write them into its file",
            path.display(),
            named("kit"),
            info.kit.as_deref().unwrap_or("none was made")
        );
    }
    let hosts = vault_hosts(home, client).await?;
    let updated = hearth_node::recovery::with_hosts(&bytes, &hosts)?;
    let (file, svg) = write_kit_file(path, &updated)?;
    if json {
        return out_json(&serde_json::json!({
            "file": file.display().to_string(),
            "qr": svg.display().to_string(),
            "hosts": hosts,
        }));
    }
    out(format!(
        "{} now names {} backup host(s); its QR code is rewritten ({}). Print it again.",
        file.display(),
        hosts.len(),
        svg.display()
    ))
}

/// The secret a kit the person keeps brings back: a kit file (`-` reads stdin, which
/// may also hold the 24 words or share lines, `share N of K: …`, one per line), with
/// the passphrase read from `passphrase_file` if the file is sealed under one.
pub(super) fn read_kit(
    path: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
) -> anyhow::Result<RecoverySecret> {
    Ok(read_kit_and_hosts(path, passphrase_file)?.0)
}

/// [`read_kit`], with the hosts a kit file names (none for words or shares).
pub(super) fn read_kit_and_hosts(
    path: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
) -> anyhow::Result<(RecoverySecret, Vec<KitHost>)> {
    let passphrase = passphrase_file.map(Passphrase::from_file).transpose()?;
    let passphrase = passphrase.as_ref();
    let bytes = Zeroizing::new(if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("cannot read stdin")?;
        buf
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    });
    if bytes.trim_ascii_start().starts_with(b"{") {
        let (secret, info) = RecoverySecret::from_file(&bytes, passphrase)?;
        return Ok((secret, info.hosts));
    }
    let text = std::str::from_utf8(&bytes).context("the kit is not text")?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.first().is_some_and(|l| l.starts_with("share ")) {
        let shares = lines
            .iter()
            .map(|l| Share::parse(l))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((RecoverySecret::combine(&shares)?, Vec::new()));
    }
    Ok((RecoverySecret::from_words(text)?, Vec::new()))
}

/// `hearth recovery-kit --check`: is this the vault's kit, and does it open every key?
pub(super) async fn check(
    home: &Home,
    json: bool,
    client: &Client,
    path: PathBuf,
    passphrase_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let secret = read_kit(&path, passphrase_file.as_deref())?;
    let kit = secret.public();
    let info: KitInfo = client
        .json(home, client.request(Method::GET, "/v1/recovery"))
        .await?;
    let status: StatusResponse = client
        .json(home, client.request(Method::GET, "/v1/status"))
        .await?;
    let vault: [u8; 16] = data_encoding::HEXLOWER
        .decode(status.vault_id.as_bytes())
        .ok()
        .and_then(|v| v.try_into().ok())
        .context("the node's vault id is not 16 bytes of hex")?;
    let records: Vec<Value> = client
        .json(
            home,
            client.request(Method::GET, "/v1/collections/_epochs/records"),
        )
        .await?;
    // The epochs that count are the ones members made: a removed device's epochs are
    // not sealed to a kit made after it left, and need not be.
    let devices: Vec<hearth_protocol::api::DeviceInfo> = client
        .json(home, client.request(Method::GET, "/v1/devices"))
        .await?;
    let members: Vec<&str> = devices
        .iter()
        .filter(|d| d.removed_at.is_none())
        .map(|d| d.id.as_str())
        .collect();
    let seed = secret.exchange_seed();
    let epochs: Vec<Epoch> = records
        .iter()
        .filter_map(Epoch::from_record)
        .filter(|e| e.verifies(&vault) && members.contains(&e.made_by.to_string().as_str()))
        .collect();
    let opened = epochs
        .iter()
        .filter(|e| e.open_as(&vault, &kit.recipient(), &seed).is_some())
        .count();
    // Epochs made while another kit was the vault's (one made on a device since
    // removed, which no longer counts) are never sealed to this one.
    let excluded = epochs
        .iter()
        .filter(|e| e.excluded.contains(&kit.recipient()))
        .count();
    let current = info.kit.as_deref() == Some(kit.id.as_str());
    if json {
        out_json(&serde_json::json!({
            "kit": kit.id,
            "current": current,
            "epochs_opened": opened,
            "epochs": epochs.len(),
        }))?;
    } else if current && opened == epochs.len() {
        out(format!(
            "kit {} is the vault's recovery kit and opens all {} epoch key(s)",
            kit.id,
            epochs.len()
        ))?;
    }
    if !current {
        bail!(
            "kit {} is not the vault's recovery kit ({}): it opens {opened} of {} epoch key(s), none made after it was replaced",
            kit.id,
            info.kit.as_deref().unwrap_or("none was made"),
            epochs.len()
        );
    }
    if excluded > 0 {
        bail!(
            "kit {} is the vault's kit but {excluded} of {} epoch key(s) were made while another kit was the vault's, and are never sealed to it: make a new kit with `hearth recovery-kit`",
            kit.id,
            epochs.len()
        );
    }
    if opened < epochs.len() {
        bail!(
            "kit {} is the vault's kit but opens only {opened} of {} epoch key(s) yet: let a device that holds them run (it seals them to the kit)",
            kit.id,
            epochs.len()
        );
    }
    Ok(())
}
