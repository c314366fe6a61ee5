//! `HOME/hearth.toml`: what `hearth up` takes as flags, for a node run as a service.
//! A flag given on the command line overrides the file. A file that cannot be read is
//! an error naming the line, and the node does not start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The file's name in HOME.
pub const FILE: &str = "hearth.toml";

/// Every key the file may hold; anything else is refused (a typo must not be ignored).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The local HTTP API's address (`--api`): `127.0.0.1:7781`, `localhost:7781`
    /// or a port alone.
    #[serde(default, deserialize_with = "api_addr")]
    pub api: Option<SocketAddr>,
    /// Allow the API on a non-loopback address (`--api-public`).
    pub api_public: Option<bool>,
    /// Serve the API and DAV on the LAN over TLS: `true` for the default address, or
    /// an address (`--lan`).
    pub lan: Option<Lan>,
    /// On the LAN, serve only what apps use, not the owner's routes
    /// (`--lan-apps-only`).
    pub lan_apps_only: Option<bool>,
    /// Where to listen for the vault's other devices (`--listen`).
    pub listen: Option<Vec<String>>,
    /// Devices to dial (`--peer`).
    pub peers: Option<Vec<String>>,
    /// Find the vault's devices on the LAN by mDNS (`--no-mdns` is `false`).
    pub mdns: Option<bool>,
    /// Relay for the vault's devices (`--relay`).
    pub relay: Option<bool>,
    /// Run the mesh at all (`--no-mesh` is `false`).
    pub mesh: Option<bool>,
    /// This device's name in the device list.
    pub name: Option<String>,
    /// A file holding the vault passphrase (`--passphrase-file`), e.g. a systemd
    /// credential.
    pub passphrase_file: Option<PathBuf>,
    /// The log filter (`info`, `debug`, `hearth_node=debug`…); `RUST_LOG` overrides it.
    pub log: Option<String>,
    /// MiB of collections kept in memory (`--cache-mb`).
    pub cache_mb: Option<u32>,
    /// How long the bytes of a removed file (a mail, a photo: anything no record names
    /// any more) stay before they are freed: `10m` (the default), `2d`, or `never`.
    #[serde(default, deserialize_with = "free_after")]
    pub free_unnamed_after: Option<FreeAfter>,
    /// `listen` and `peers`, parsed.
    #[serde(skip)]
    listen_addrs: Vec<hearth_node::Multiaddr>,
    #[serde(skip)]
    peer_addrs: Vec<hearth_node::Multiaddr>,
}

/// `free_unnamed_after`: a duration, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeAfter(pub Option<std::time::Duration>);

fn free_after<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<FreeAfter>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    hearth_node::access::grants::parse_duration(&text)
        .map(|d| Some(FreeAfter(d)))
        .map_err(|e| serde::de::Error::custom(format!("free_unnamed_after: {e}")))
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum Lan {
    On(bool),
    At(SocketAddr),
}

impl Config {
    /// Reads `HOME/hearth.toml`; no file is an empty configuration.
    pub fn load(home: &Path) -> anyhow::Result<Self> {
        let path = home.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Reads the file's text; the error names the line and what was wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut config: Self = toml::from_str(text).map_err(|e| one_paragraph(&e))?;
        if let Some(name) = &config.name {
            hearth_node::devices::valid_name(name).map_err(|e| format!("name: {e}"))?;
        }
        if let Some(filter) = &config.log {
            tracing_subscriber::EnvFilter::try_new(filter)
                .map_err(|e| format!("log: {filter:?} is not a log filter ({e})"))?;
        }
        if config.cache_mb == Some(0) {
            return Err("cache_mb: 0 would keep nothing in memory; give at least 1 (MiB)".into());
        }
        config.listen_addrs = multiaddrs("listen", &config.listen)?;
        config.peer_addrs = multiaddrs("peers", &config.peers)?;
        Ok(config)
    }

    pub fn listen(&self) -> Vec<hearth_node::Multiaddr> {
        self.listen_addrs.clone()
    }

    pub fn peers(&self) -> Vec<hearth_node::Multiaddr> {
        self.peer_addrs.clone()
    }
}

/// An address for the API as a person writes it: `127.0.0.1:7781`, `[::1]:7781`,
/// `localhost:7781`, or a port alone (`7781`, on 127.0.0.1).
pub fn parse_api_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number (0 to 65535)"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not an address: write IP:PORT (127.0.0.1:7781), localhost:PORT or a port"
        )
    })
}

fn api_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    /// `api = "127.0.0.1:7781"`, or a port as a number: `api = 7781`.
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Given {
        Port(u16),
        Text(String),
    }
    let text = match <Given as serde::Deserialize>::deserialize(d).map_err(|_| {
        serde::de::Error::custom("api: give an address (\"127.0.0.1:7781\") or a port (7781)")
    })? {
        Given::Port(port) => port.to_string(),
        Given::Text(text) => text,
    };
    parse_api_addr(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn multiaddrs(
    key: &str,
    list: &Option<Vec<String>>,
) -> Result<Vec<hearth_node::Multiaddr>, String> {
    list.iter()
        .flatten()
        .map(|addr| {
            addr.parse()
                .map_err(|e| format!("{key}: {addr:?} is not a multiaddr ({e})"))
        })
        .collect()
}

/// toml's error on one line: "line N, column M: what was wrong".
fn one_paragraph(e: &toml::de::Error) -> String {
    let full = e.to_string();
    let place = full
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("TOML parse error at "))
        .unwrap_or_default();
    if place.is_empty() {
        e.message().to_owned()
    } else {
        format!("{place}: {}", e.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_file_is_read() {
        let config = Config::parse(
            r#"
api = "127.0.0.1:7781"
lan = true
listen = ["/ip4/0.0.0.0/tcp/4001"]
peers = []
mdns = false
name = "home server"
passphrase_file = "/run/credentials/hearth.service/passphrase"
log = "hearth_node=debug,info"
cache_mb = 32
free_unnamed_after = "2d"
"#,
        )
        .unwrap();
        assert_eq!(config.cache_mb, Some(32));
        assert_eq!(
            config.free_unnamed_after,
            Some(FreeAfter(Some(std::time::Duration::from_secs(2 * 86_400))))
        );
        assert_eq!(
            Config::parse("free_unnamed_after = \"never\"\n")
                .unwrap()
                .free_unnamed_after,
            Some(FreeAfter(None))
        );
        assert_eq!(config.api, Some("127.0.0.1:7781".parse().unwrap()));
        assert!(matches!(config.lan, Some(Lan::On(true))));
        assert_eq!(config.listen().len(), 1);
        assert_eq!(config.mdns, Some(false));
        for (text, addr) in [
            ("7781", "127.0.0.1:7781"),
            ("localhost:7781", "127.0.0.1:7781"),
            ("[::1]:7781", "[::1]:7781"),
            ("0.0.0.0:80", "0.0.0.0:80"),
        ] {
            assert_eq!(parse_api_addr(text), Ok(addr.parse().unwrap()), "{text}");
            let config = Config::parse(&format!("api = \"{text}\"")).unwrap();
            assert_eq!(config.api, Some(addr.parse().unwrap()));
        }
        let numeric = Config::parse("api = 7781").unwrap();
        assert_eq!(numeric.api, Some("127.0.0.1:7781".parse().unwrap()));
        assert!(Config::parse("api = 70000").unwrap_err().contains("line 1"));
        for bad in ["localhost:http", "70000", "example.com:80", ""] {
            assert!(parse_api_addr(bad).is_err(), "{bad}");
        }
        let lan = Config::parse("lan = \"0.0.0.0:8443\"").unwrap();
        assert!(matches!(lan.lan, Some(Lan::At(_))));
    }

    #[test]
    fn a_bad_file_names_the_line() {
        for (text, needle) in [
            ("api = \"127.0.0.1:7781\"\nmdns = \"yes\"\n", "line 2"),
            ("api = \"not an address\"\n", "line 1"),
            ("cache_mb = 0\n", "at least 1"),
            (
                "free_unnamed_after = \"soon\"\n",
                "free_unnamed_after: duration \"soon\"",
            ),
            ("cache_mb = -4\n", "line 1"),
            ("\n\nlisten = [\"nonsense\"]\n", "listen"),
            ("apii = \"127.0.0.1:1\"\n", "line 1"),
            ("name = \"\"\n", "name"),
            ("[api\n", "line 1"),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
