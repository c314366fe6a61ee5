//! The commands. Each prints text for people, or with `--json` one JSON value.

use std::path::PathBuf;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use hearth_node::home::Home;
use hearth_node::keys::Passphrase;
use hearth_node::{Node, NodeConfig};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::args::{BlobCommand, Cli, Command, DevicesCommand, PassphraseArgs, TokenCommand};
use crate::client::{Client, read_data_arg};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::new(resolve_home(cli.global.home)?);
    let json = cli.global.json;
    match cli.command {
        Command::Init { passphrase } => init(&home, json, passphrase).await,
        Command::Up {
            api,
            api_public,
            listen,
            peer,
            no_mdns,
            relay,
            no_mesh,
            passphrase,
        } => {
            let mesh = (!no_mesh).then(|| {
                let mut mesh = hearth_node::mesh::MeshConfig::default();
                if !listen.is_empty() {
                    mesh.listen = listen;
                }
                mesh.peers = peer;
                mesh.mdns = !no_mdns;
                mesh.relay_server = relay;
                mesh
            });
            up(home, json, api, api_public, mesh, passphrase).await
        }
        Command::Token {
            command:
                TokenCommand::Attenuate {
                    token,
                    read,
                    expires,
                },
        } => {
            let expires = match expires.as_deref() {
                Some(text) => hearth_node::access::parse_duration(text)?,
                None => None,
            };
            let narrower = hearth_node::access::attenuate(&token, &read, expires)?;
            if json {
                println!("{}", json!({"token": narrower}));
            } else {
                println!("{narrower}");
            }
            Ok(())
        }
        Command::Join {
            code,
            name,
            passphrase,
        } => join(&home, json, &code, name, passphrase).await,
        Command::Passphrase {
            passphrase: old,
            new_passphrase_file,
            remove,
        } => change_passphrase(&home, json, old, new_passphrase_file, remove),
        command => client_command(&home, json, command).await,
    }
}

fn resolve_home(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(home) => Ok(home),
        None => dirs::data_dir()
            .map(|d| d.join("hearth"))
            .context("no --home, no HEARTH_HOME and no platform data directory; give --home DIR"),
    }
}

fn passphrase(args: PassphraseArgs) -> anyhow::Result<Option<Passphrase>> {
    if let Some(file) = args.passphrase_file {
        return Ok(Some(Passphrase::from_file(&file)?));
    }
    match std::env::var("HEARTH_PASSPHRASE") {
        Ok(text) => Ok(Some(Passphrase::new(text).context("HEARTH_PASSPHRASE")?)),
        Err(_) => Ok(None),
    }
}

fn change_passphrase(
    home: &Home,
    json: bool,
    old: PassphraseArgs,
    new_file: Option<PathBuf>,
    remove: bool,
) -> anyhow::Result<()> {
    let old = passphrase(old)?;
    let new = match (new_file, remove) {
        (_, true) => None,
        (Some(file), false) => Some(Passphrase::from_file(&file)?),
        (None, false) => match std::env::var("HEARTH_NEW_PASSPHRASE") {
            Ok(text) => Some(Passphrase::new(text).context("HEARTH_NEW_PASSPHRASE")?),
            Err(_) => anyhow::bail!(
                "give the new passphrase with --new-passphrase-file F or HEARTH_NEW_PASSPHRASE, or --remove"
            ),
        },
    };
    hearth_node::keys::change_passphrase(home, old.as_ref(), new.as_ref())?;
    let keys = home.keys().display().to_string();
    if json {
        println!("{}", json!({"keys": keys, "passphrase": new.is_some()}));
    } else if new.is_some() {
        println!("The key file {keys} is now wrapped by the new passphrase.");
    } else {
        println!(
            "The key file {keys} has no passphrase now: anyone who can read it can open the vault."
        );
    }
    Ok(())
}

async fn init(home: &Home, json: bool, args: PassphraseArgs) -> anyhow::Result<()> {
    let passphrase = passphrase(args)?;
    let made = hearth_node::init_vault(home, passphrase.as_ref()).await?;
    let root = home.root().display().to_string();
    if json {
        println!(
            "{}",
            json!({"home": root, "peer_id": made.peer_id.to_string(),
                   "vault_id": made.vault_id, "passphrase": made.passphrase})
        );
    } else {
        println!("Created a vault in {root}");
        println!("  device (peer id): {}", made.peer_id);
        println!("  owner token:      {}", home.owner_token().display());
        if made.passphrase {
            println!(
                "  secrets:          {} (wrapped by your passphrase)",
                home.keys().display()
            );
        } else {
            println!(
                "  secrets:          {} (no passphrase: anyone who can read this file can open the vault;\n                    set one with --passphrase-file or HEARTH_PASSPHRASE at init)",
                home.keys().display()
            );
        }
        println!("Run the node with: hearth --home {root} up");
    }
    Ok(())
}

async fn up(
    home: Home,
    json: bool,
    api: std::net::SocketAddr,
    api_public: bool,
    mesh: Option<hearth_node::mesh::MeshConfig>,
    args: PassphraseArgs,
) -> anyhow::Result<()> {
    init_tracing();
    let mut config = NodeConfig::new(home.root());
    config.api_addr = api;
    config.allow_public_api = api_public;
    config.mesh = mesh;
    config.passphrase = passphrase(args)?;
    let had_passphrase = config.passphrase.is_some();
    let node = Node::start(config).await?;
    let root = home.root().display().to_string();
    if json {
        println!(
            "{}",
            json!({"home": root, "api_addr": node.api_addr().to_string(),
                   "peer_id": node.peer_id().to_string(), "vault_id": node.vault_id(),
                   "created": node.created_vault()})
        );
    } else {
        if node.created_vault() {
            println!("Created a new vault in {root}");
            if !had_passphrase {
                println!(
                    "  (no passphrase: its secrets are in {}, mode 0600)",
                    home.keys().display()
                );
            }
        }
        println!("Hearth node running");
        println!("  data:    {root}");
        println!("  api:     http://{}", node.api_addr());
        println!("  peer id: {}", node.peer_id());
        if let Some(mesh) = node.vault().mesh() {
            for addr in mesh.handle.listen_addrs().await.unwrap_or_default() {
                println!("  mesh:    {addr}/p2p/{}", node.peer_id());
            }
        }
        println!("Stop with Ctrl-C.");
    }
    wait_for_signal().await?;
    node.shutdown()
        .await
        .context("flushing the store on shutdown")?;
    Ok(())
}

async fn join(
    home: &Home,
    json: bool,
    code: &str,
    name: Option<String>,
    args: PassphraseArgs,
) -> anyhow::Result<()> {
    let passphrase = passphrase(args)?;
    let name = name.unwrap_or_else(hearth_node::mesh::devices::default_device_name);
    let joined = hearth_node::mesh::pairing::join(home, code, passphrase.as_ref(), &name).await?;
    let root = home.root().display().to_string();
    if json {
        println!(
            "{}",
            json!({"home": root, "peer_id": joined.peer_id.to_string(),
                   "vault_id": joined.vault_id, "inviter": joined.inviter.to_string()})
        );
    } else {
        println!(
            "This device ({}) joined the vault {}",
            joined.peer_id, joined.vault_id
        );
        println!(
            "Start it with: hearth --home {root} up   (it will sync with {})",
            joined.inviter
        );
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn client_command(home: &Home, json: bool, command: Command) -> anyhow::Result<()> {
    let client = Client::connect(home)?;
    match command {
        Command::Status => {
            let status = client
                .json(home, client.request(Method::GET, "/v1/status"))
                .await?;
            if json {
                println!("{status}");
            } else {
                print_status(&status);
            }
        }
        Command::Put { collection, rest } => {
            let (id, data) = match rest.as_slice() {
                [data] => (None, data),
                [id, data] => (Some(id), data),
                _ => bail!("put takes COLLECTION [ID] JSON|@FILE|-"),
            };
            let body = read_data_arg(data)?;
            let request = match id {
                Some(id) => client.request(Method::PUT, &record_path(&collection, id)?),
                None => client.request(
                    Method::POST,
                    &format!("/v1/collections/{}/records", seg(&collection)),
                ),
            };
            let answer = client
                .json(
                    home,
                    request
                        .header("content-type", "application/json")
                        .body(body),
                )
                .await?;
            if json {
                println!("{answer}");
            } else {
                println!("{}", answer["id"].as_str().unwrap_or_default());
            }
        }
        Command::Get { collection, id } => {
            let record = client
                .json(
                    home,
                    client.request(Method::GET, &record_path(&collection, &id)?),
                )
                .await?;
            print_value(json, &record, true);
        }
        Command::Patch {
            collection,
            id,
            data,
        } => {
            let body = read_data_arg(&data)?;
            let request = client
                .request(Method::PATCH, &record_path(&collection, &id)?)
                .header("content-type", "application/merge-patch+json")
                .body(body);
            let record = client.json(home, request).await?;
            print_value(json, &record, true);
        }
        Command::Ls { collection } => {
            let path = format!("/v1/collections/{}/records", seg(&collection));
            let records = client
                .json(home, client.request(Method::GET, &path))
                .await?;
            if json {
                println!("{records}");
            } else {
                for record in records.as_array().into_iter().flatten() {
                    println!("{record}");
                }
            }
        }
        Command::Rm { collection, id } => {
            client
                .send(
                    home,
                    client.request(Method::DELETE, &record_path(&collection, &id)?),
                )
                .await?;
            if json {
                println!("{}", json!({"id": id, "removed": true}));
            } else {
                println!("removed {collection}/{id}");
            }
        }
        Command::Collections => {
            let list = client
                .json(home, client.request(Method::GET, "/v1/collections"))
                .await?;
            if json {
                println!("{list}");
            } else {
                for c in list.as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}",
                        c["name"].as_str().unwrap_or_default(),
                        c["records"]
                    );
                }
            }
        }
        Command::Pair => {
            let invite = client
                .json(home, client.request(Method::POST, "/v1/devices/invite"))
                .await?;
            let code = invite["code"].as_str().unwrap_or_default();
            if json {
                println!("{invite}");
            } else {
                println!("{code}");
                eprintln!();
                eprintln!("On the new device, with an empty HOME:  hearth join {code}");
                eprintln!("The code works once, within 10 minutes. Treat it like a password.");
                print_qr(code);
            }
        }
        Command::Devices { command: None } => {
            let devices = client
                .json(home, client.request(Method::GET, "/v1/devices"))
                .await?;
            if json {
                println!("{devices}");
            } else {
                print_devices(&devices);
            }
        }
        Command::Devices {
            command: Some(DevicesCommand::Remove { peer_id }),
        } => {
            client
                .send(
                    home,
                    client.request(Method::DELETE, &format!("/v1/devices/{}", seg(&peer_id))),
                )
                .await?;
            if json {
                println!("{}", json!({"id": peer_id, "removed": true}));
            } else {
                println!("removed device {peer_id}; it receives nothing written from now on");
            }
        }
        Command::Grant {
            service,
            read,
            write,
            filters,
            expires,
            purpose,
            to,
            rate,
        } => {
            let request = hearth_protocol::api::GrantRequest {
                service,
                read,
                write,
                filters,
                expires,
                purpose,
                to,
                rate,
            };
            let created = client
                .json(
                    home,
                    client.request(Method::POST, "/v1/grants").json(&request),
                )
                .await?;
            if json {
                println!("{created}");
            } else {
                let expires = match created["expires_at"].as_u64() {
                    Some(t) => format!(
                        "expires in {}",
                        human_duration(t.saturating_sub(hearth_node::access::now_unix()))
                    ),
                    None => "never expires".to_owned(),
                };
                println!(
                    "grant {} ({expires})",
                    created["id"].as_str().unwrap_or_default()
                );
                println!("token: {}", created["token"].as_str().unwrap_or_default());
                eprintln!(
                    "Give the token to the service; it reads with `Authorization: Bearer <token>` at /v1/view."
                );
            }
        }
        Command::Grants => {
            let grants = client
                .json(home, client.request(Method::GET, "/v1/grants"))
                .await?;
            if json {
                println!("{grants}");
            } else {
                for g in grants.as_array().into_iter().flatten() {
                    let scope: Vec<String> = g["scope"]["collections"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(name, c)| {
                            let ops = match (c["read"] == true, c["write"] == true) {
                                (true, true) => "rw",
                                (false, true) => "w",
                                _ => "r",
                            };
                            let fields = match &c["fields"] {
                                Value::Object(o) => o
                                    .get("only")
                                    .and_then(Value::as_array)
                                    .map(|f| {
                                        f.iter()
                                            .filter_map(Value::as_str)
                                            .collect::<Vec<_>>()
                                            .join("+")
                                    })
                                    .unwrap_or_default(),
                                _ => "*".to_owned(),
                            };
                            format!("{name}.{fields}({ops})")
                        })
                        .collect();
                    println!(
                        "{}\t{}\t{}\t{}\tpurpose: {}\tlast used: {}",
                        g["id"].as_str().unwrap_or_default(),
                        g["service"].as_str().unwrap_or_default(),
                        g["status"].as_str().unwrap_or_default(),
                        scope.join(" "),
                        g["purpose"].as_str().unwrap_or_default(),
                        g["last_used"]
                            .as_u64()
                            .map_or("never".to_owned(), |t| format!(
                                "{}s ago",
                                hearth_node::access::now_unix().saturating_sub(t)
                            )),
                    );
                }
            }
        }
        Command::Revoke { grant_id } => {
            let path = format!("/v1/grants/{}/revoke", seg(&grant_id));
            let answer = client
                .json(home, client.request(Method::POST, &path))
                .await?;
            if json {
                println!("{answer}");
            } else {
                let seen = &answer["seen"];
                println!(
                    "revoked grant {grant_id}: its next request is refused here, and on your other devices once they sync."
                );
                println!(
                    "What {} already saw ({} accesses):",
                    answer["grant"]["service"].as_str().unwrap_or_default(),
                    seen["accesses"]
                );
                for c in seen["collections"].as_array().into_iter().flatten() {
                    println!(
                        "  {}: {} record reads, fields {}",
                        c["collection"].as_str().unwrap_or_default(),
                        c["record_reads"],
                        c["fields"]
                    );
                }
                println!("Revocation cannot take back what was already sent.");
            }
        }
        Command::Audit { grant, verify } => {
            if verify {
                let answer = client
                    .json(home, client.request(Method::GET, "/v1/audit/verify"))
                    .await?;
                if answer["ok"] != true {
                    bail!(
                        "the audit log does not verify at entry {}: {}",
                        answer["entry"].as_str().unwrap_or("?"),
                        answer["reason"].as_str().unwrap_or("?")
                    );
                }
                if json {
                    println!("{answer}");
                } else {
                    println!("the audit log verifies: {} entries", answer["entries"]);
                }
            } else {
                let path = match &grant {
                    Some(g) => format!("/v1/audit?grant={}", seg(g)),
                    None => "/v1/audit".to_owned(),
                };
                let entries = client
                    .json(home, client.request(Method::GET, &path))
                    .await?;
                if json {
                    println!("{entries}");
                } else {
                    for e in entries.as_array().into_iter().flatten() {
                        println!(
                            "{}\t{}\t{}\t{} {}\t{} records\tfields {}",
                            e["at"],
                            e["grant"].as_str().unwrap_or_default(),
                            e["service"].as_str().unwrap_or_default(),
                            e["operation"].as_str().unwrap_or_default(),
                            e["collection"].as_str().unwrap_or_default(),
                            e["records"],
                            e["fields"]
                        );
                    }
                }
            }
        }
        Command::Blob { command } => blob(home, json, &client, command).await?,
        Command::Init { .. }
        | Command::Up { .. }
        | Command::Join { .. }
        | Command::Passphrase { .. }
        | Command::Token { .. } => {
            unreachable!("handled in run")
        }
    }
    Ok(())
}

async fn blob(
    home: &Home,
    json: bool,
    client: &Client,
    command: BlobCommand,
) -> anyhow::Result<()> {
    match command {
        BlobCommand::Put { file } => {
            let body = if file.as_os_str() == "-" {
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(tokio::io::stdin()))
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("cannot open {}", file.display()))?;
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f))
            };
            let info = client
                .json(home, client.request(Method::POST, "/v1/blobs").body(body))
                .await?;
            if json {
                println!("{info}");
            } else {
                println!("{}", info["id"].as_str().unwrap_or_default());
            }
        }
        BlobCommand::Get { id, output } => {
            hearth_protocol::BlobId::parse(&id)?;
            if json && output.is_none() {
                bail!("with --json, give -o FILE (the blob's bytes are not JSON)");
            }
            let response = client
                .send(
                    home,
                    client.request(Method::GET, &format!("/v1/blobs/{}", seg(&id))),
                )
                .await?;
            let mut stream = response.bytes_stream();
            let mut size = 0u64;
            match &output {
                Some(path) => {
                    // Written beside the target and renamed, so a failed transfer leaves
                    // no partial file under the name asked for.
                    let tmp = path.with_extension("hearth-partial");
                    let result: anyhow::Result<()> = async {
                        let mut out = tokio::fs::File::create(&tmp)
                            .await
                            .with_context(|| format!("cannot create {}", tmp.display()))?;
                        while let Some(chunk) = stream
                            .try_next()
                            .await
                            .context("the transfer broke off (the blob may be corrupt)")?
                        {
                            size += chunk.len() as u64;
                            out.write_all(&chunk).await?;
                        }
                        out.flush().await?;
                        out.sync_all().await?;
                        tokio::fs::rename(&tmp, path).await?;
                        Ok(())
                    }
                    .await;
                    if let Err(e) = result {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return Err(e.context(format!("blob {id} is corrupt or unreadable")));
                    }
                    if json {
                        println!(
                            "{}",
                            json!({"id": id, "size": size, "path": path.display().to_string()})
                        );
                    } else {
                        eprintln!("wrote {size} bytes to {}", path.display());
                    }
                }
                None => {
                    let mut out = tokio::io::stdout();
                    while let Some(chunk) = stream.try_next().await.with_context(|| {
                        format!("blob {id} is corrupt or unreadable: the transfer broke off")
                    })? {
                        out.write_all(&chunk).await?;
                    }
                    out.flush().await?;
                }
            }
        }
    }
    Ok(())
}

fn print_value(json: bool, value: &Value, pretty: bool) {
    if json || !pretty {
        println!("{value}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
    }
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{} days", s / 86_400),
        s if s >= 3600 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s / 60),
    }
}

fn print_devices(devices: &Value) {
    for d in devices.as_array().into_iter().flatten() {
        let state = if d["removed_at"].is_u64() {
            "removed"
        } else if d["this_device"] == true {
            "this device"
        } else if d["online"] == true {
            "online"
        } else {
            "offline"
        };
        let synced = match d["last_sync"].as_u64() {
            Some(t) => format!(
                "last sync {}s ago",
                hearth_node::mesh::devices::now_unix().saturating_sub(t)
            ),
            None => String::new(),
        };
        println!(
            "{}\t{}\t{}\t{}",
            d["id"].as_str().unwrap_or_default(),
            d["name"].as_str().unwrap_or_default(),
            state,
            synced
        );
    }
}

/// The invite as a QR code on stderr, for a phone's camera.
fn print_qr(code: &str) {
    if let Ok(qr) = qrcode::QrCode::new(code.to_ascii_uppercase().as_bytes()) {
        let text = qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        eprintln!("{text}");
    }
}

fn print_status(status: &Value) {
    let s = |k: &str| status[k].as_str().unwrap_or_default().to_owned();
    println!("vault    {}", s("vault_id"));
    println!("device   {}", s("peer_id"));
    println!("home     {}", s("home"));
    println!("api      http://{}", s("api_addr"));
    let collections: Vec<String> = status["collections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} ({})",
                c["name"].as_str().unwrap_or_default(),
                c["records"]
            )
        })
        .collect();
    if collections.is_empty() {
        println!("collections  none yet");
    } else {
        println!("collections  {}", collections.join(", "));
    }
    println!("blobs    {}", status["blobs"]);
    for addr in status["listen_addrs"].as_array().into_iter().flatten() {
        println!("listen   {}", addr.as_str().unwrap_or_default());
    }
    println!("devices");
    print_devices(&status["devices"]);
}

fn record_path(collection: &str, id: &str) -> anyhow::Result<String> {
    // URL normalisation would turn the ids "." and ".." into another route: refuse
    // them here, in the node's words (no valid id starts with '.').
    if id.starts_with('.') {
        hearth_protocol::RecordId::parse(id)?;
    }
    Ok(format!(
        "/v1/collections/{}/records/{}",
        seg(collection),
        seg(id)
    ))
}

/// Percent-encodes a path segment, so a bad name reaches the node (which explains
/// what is wrong) instead of changing the route.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
