//! A small internet in network namespaces, made and removed by the test: a public
//! router `r` (where a relay runs), and two homes, each a NAT router (nftables
//! masquerade) with one host behind it. The hosts cannot reach each other's addresses
//! at all; both reach `r`. Needs root, `ip` (iproute2) and `nft` (Debian's nftables);
//! [`NatLab::new`] says why it cannot instead of letting a test pass without running.
//!
//! ```text
//!  h1 10.X.11.2 ── 10.X.11.1 n1 10.X.1.2 ──┐            ┌── 10.X.2.2 n2 10.X.12.1 ── 10.X.12.2 h2
//!                  (masquerade)            10.X.1.1  r  10.X.2.1        (masquerade)
//! ```

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{NodeProcess, spawn_node_wrapped};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// How a home router maps its hosts' connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Linux's masquerade: the source port kept where it can be (endpoint-independent
    /// mapping, as most home routers).
    EndpointIndependent,
    /// `masquerade fully-random`: every connection gets a random port (a symmetric NAT,
    /// as some carrier-grade NATs).
    Symmetric,
}

/// One home: its router's namespace and its host's.
pub struct Home {
    pub router: String,
    pub host: String,
    /// The host's address on its LAN (not reachable from outside).
    pub host_addr: String,
    /// The router's address on the public side.
    pub wan_addr: String,
    /// `r`'s address on this home's side.
    pub relay_addr: String,
}

pub struct NatLab {
    /// The public router's namespace (where a relay runs).
    pub relay: String,
    pub homes: [Home; 2],
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"))
}

fn must(what: &str, out: Output) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    must(&format!("ip {}", args.join(" ")), run("ip", args))
}

impl NatLab {
    /// Makes the namespaces, links, routes and NAT rules, or says why it cannot.
    pub fn new(nat: Nat) -> Result<Self, String> {
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let x = (std::process::id() as usize + k * 37) % 200 + 20;
        let tag = format!("{}{}", std::process::id() % 10_000, k);
        let ns = |role: &str| format!("hn-{role}-{tag}");
        let lab = NatLab {
            relay: ns("r"),
            homes: [1, 2].map(|i| Home {
                router: ns(&format!("n{i}")),
                host: ns(&format!("h{i}")),
                host_addr: format!("10.{x}.{}.2", 10 + i),
                wan_addr: format!("10.{x}.{i}.2"),
                relay_addr: format!("10.{x}.{i}.1"),
            }),
        };
        if Command::new("nft").arg("--version").output().is_err() {
            return Err("`nft` is not installed (Debian: nftables)".into());
        }
        let probe = run("ip", &["netns", "add", &lab.relay]);
        if !probe.status.success() {
            return Err(format!(
                "`ip netns add` is not permitted here ({}); NAT tests need root",
                String::from_utf8_lossy(&probe.stderr).trim()
            ));
        }
        // From here on, Drop removes whatever was made.
        lab.build(x, &tag, nat)?;
        Ok(lab)
    }

    fn build(&self, x: usize, tag: &str, nat: Nat) -> Result<(), String> {
        for home in &self.homes {
            ip(&["netns", "add", &home.router])?;
            ip(&["netns", "add", &home.host])?;
        }
        for ns in self.namespaces() {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (i, home) in self.homes.iter().enumerate() {
            let i = i + 1;
            // Interface names: at most 15 bytes.
            let (r_dev, wan, lan, host_dev) = (
                format!("r{i}{tag}"),
                format!("w{i}{tag}"),
                format!("l{i}{tag}"),
                format!("h{i}{tag}"),
            );
            for (a_ns, a_dev, b_ns, b_dev) in [
                (&self.relay, &r_dev, &home.router, &wan),
                (&home.router, &lan, &home.host, &host_dev),
            ] {
                ip(&[
                    "link", "add", a_dev, "netns", a_ns, "type", "veth", "peer", "name", b_dev,
                    "netns", b_ns,
                ])?;
            }
            let lan_router = format!("10.{x}.{}.1", 10 + i);
            for (ns, dev, addr) in [
                (&self.relay, &r_dev, &home.relay_addr),
                (&home.router, &wan, &home.wan_addr),
                (&home.router, &lan, &lan_router),
                (&home.host, &host_dev, &home.host_addr),
            ] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
            ip(&[
                "-n",
                &home.router,
                "route",
                "add",
                "default",
                "via",
                &home.relay_addr,
            ])?;
            ip(&[
                "-n",
                &home.host,
                "route",
                "add",
                "default",
                "via",
                &lan_router,
            ])?;
            let masquerade = match nat {
                Nat::EndpointIndependent => "masquerade",
                Nat::Symmetric => "masquerade fully-random",
            };
            // Out through the WAN: masqueraded. In from the WAN, to a host or to the
            // router itself: only what belongs to a connection opened from inside (a
            // packet the router answered itself would take the port the NAT needs).
            let rules = format!(
                "table ip nat {{\n  chain post {{\n    type nat hook postrouting priority 100;\n    oifname \"{wan}\" {masquerade}\n  }}\n}}\n\
                 table ip filter {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{wan}\" ct state established,related accept\n    iifname \"{wan}\" drop\n  }}\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname \"{wan}\" ct state established,related accept\n    iifname \"{wan}\" drop\n  }}\n}}\n"
            );
            let file = std::env::temp_dir().join(format!("hearth-nat-{tag}-{i}.nft"));
            std::fs::write(&file, rules).map_err(|e| e.to_string())?;
            let loaded = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &home.router,
                    "nft",
                    "-f",
                    file.to_str().unwrap(),
                ],
            );
            let _ = std::fs::remove_file(&file);
            must("nft", loaded)?;
        }
        for ns in [&self.relay, &self.homes[0].router, &self.homes[1].router] {
            must(
                "ip_forward",
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        ns,
                        "sysctl",
                        "-q",
                        "-w",
                        "net.ipv4.ip_forward=1",
                    ],
                ),
            )?;
        }
        Ok(())
    }

    fn namespaces(&self) -> Vec<&String> {
        let mut all = vec![&self.relay];
        for home in &self.homes {
            all.push(&home.router);
            all.push(&home.host);
        }
        all
    }

    /// Starts `hearth up` in namespace `ns`, listening on TCP on every address there.
    pub fn spawn(ns: &str, home: &std::path::Path, extra: &[&str]) -> NodeProcess {
        let mut args = vec!["--listen", "/ip4/0.0.0.0/tcp/0"];
        args.extend_from_slice(extra);
        // The mesh's debug lines (connections, punches, sessions) are what a failure
        // in a lab needs; the tests print them when a wait fails.
        let log =
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,hearth_node::mesh=debug".into());
        spawn_node_wrapped(
            &["ip", "netns", "exec", ns],
            home,
            &args,
            &[("RUST_LOG", &log)],
        )
    }

    /// Whether a TCP connection from `from` to `addr:port` gets through (`nc -z`-like,
    /// with bash's /dev/tcp): to check that the homes cannot reach each other.
    pub fn reaches(from: &str, addr: &str, port: u16) -> bool {
        let script = format!("exec 3<>/dev/tcp/{addr}/{port}");
        Command::new("ip")
            .args(["netns", "exec", from, "timeout", "2", "bash", "-c", &script])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for ns in self.namespaces() {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}
