//! Network namespaces joined by a veth pair, made and removed by the test itself, so
//! that two `hearth` processes talk over a real (virtual) link the test can cut, slow
//! down and make lossy. Needs root and `ip`/`tc` (iproute2); [`Link::new`] says loudly
//! why it cannot, instead of a test passing without having run.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{NodeProcess, spawn_node_wrapped};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Two namespaces `a` and `b` with one veth pair between them: `10.77.N.1` in `a`,
/// `10.77.N.2` in `b`. Removed on drop.
pub struct Link {
    pub a: String,
    pub b: String,
    pub a_addr: String,
    pub b_addr: String,
    dev_a: String,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"))
}

fn must(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    /// Makes the namespaces, or explains why this machine cannot.
    pub fn new() -> Result<Self, String> {
        let n = (std::process::id() as usize % 200) + NEXT.fetch_add(1, Ordering::SeqCst) * 7 % 50;
        let tag = format!("{}-{}", std::process::id(), NEXT.load(Ordering::SeqCst));
        let (a, b) = (format!("hx-a-{tag}"), format!("hx-b-{tag}"));
        let probe = ip(&["netns", "add", &a]);
        if !probe.status.success() {
            return Err(format!(
                "`ip netns add` is not permitted here ({}); network fault tests need root",
                String::from_utf8_lossy(&probe.stderr).trim()
            ));
        }
        let link = Link {
            a,
            b,
            a_addr: format!("10.77.{n}.1"),
            b_addr: format!("10.77.{n}.2"),
            dev_a: format!("hxa{}", n),
        };
        let dev_b = format!("hxb{n}");
        must("netns add", ip(&["netns", "add", &link.b]));
        must(
            "veth",
            ip(&[
                "link",
                "add",
                &link.dev_a,
                "netns",
                &link.a,
                "type",
                "veth",
                "peer",
                "name",
                &dev_b,
                "netns",
                &link.b,
            ]),
        );
        for (ns, dev, addr) in [
            (&link.a, &link.dev_a, &link.a_addr),
            (&link.b, &dev_b, &link.b_addr),
        ] {
            must("lo up", ip(&["-n", ns, "link", "set", "lo", "up"]));
            must(
                "addr",
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]),
            );
            must("up", ip(&["-n", ns, "link", "set", dev, "up"]));
        }
        Ok(link)
    }

    /// `ip netns exec NS`, to put in front of a command.
    pub fn exec_in(ns: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns.into()]
    }

    /// Starts `hearth up` in namespace `ns`, listening on `addr` (TCP).
    pub fn spawn(
        &self,
        ns: &str,
        addr: &str,
        home: &std::path::Path,
        extra: &[&str],
    ) -> NodeProcess {
        let wrapper = Self::exec_in(ns);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let listen = format!("/ip4/{addr}/tcp/0");
        let mut args = vec!["--listen", listen.as_str()];
        args.extend_from_slice(extra);
        spawn_node_wrapped(&wrapper, home, &args, &[])
    }

    /// Runs `hearth --home HOME --json ARGS` inside `ns` (where the node's loopback
    /// API is) and parses its output.
    pub fn cli(ns: &str, home: &std::path::Path, args: &[&str]) -> serde_json::Value {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(crate::hearth_bin())
            .args(["--home", home.to_str().expect("utf-8"), "--json"])
            .args(args)
            .env_remove("HEARTH_HOME");
        let out = crate::run_with_deadline(cmd, None);
        crate::parse_json_output(args, &out)
    }

    /// The TCP port the node of HOME in `ns` listens on at `addr`.
    pub fn tcp_port(ns: &str, home: &std::path::Path, addr: &str) -> u16 {
        let status = Self::cli(ns, home, &["status"]);
        let prefix = format!("/ip4/{addr}/tcp/");
        status["listen_addrs"]
            .as_array()
            .expect("listen_addrs")
            .iter()
            .filter_map(serde_json::Value::as_str)
            .find_map(|a| a.strip_prefix(&prefix)?.split('/').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no listen address on {addr}: {status}"))
    }

    /// Like [`Link::cli`], returning the raw output (for commands that may fail).
    pub fn cli_raw(ns: &str, home: &std::path::Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(crate::hearth_bin())
            .args(["--home", home.to_str().expect("utf-8")])
            .args(args)
            .env_remove("HEARTH_HOME");
        crate::run_with_deadline(cmd, None)
    }

    /// Cuts the link (both directions): packets in flight are lost.
    pub fn cut(&self) {
        must(
            "link down",
            ip(&["-n", &self.a, "link", "set", &self.dev_a, "down"]),
        );
    }

    pub fn heal(&self) {
        must(
            "link up",
            ip(&["-n", &self.a, "link", "set", &self.dev_a, "up"]),
        );
    }

    /// Shapes a's side of the link with `tc qdisc ... ARGS` (replacing any shaping).
    pub fn shape(&self, args: &[&str]) {
        let mut all = vec![
            "-n",
            self.a.as_str(),
            "qdisc",
            "replace",
            "dev",
            self.dev_a.as_str(),
            "root",
        ];
        all.extend_from_slice(args);
        let out = Command::new("tc").args(&all).output().expect("tc");
        must(&format!("tc {all:?}"), out);
    }

    pub fn unshape(&self) {
        let _ = Command::new("tc")
            .args(["-n", &self.a, "qdisc", "del", "dev", &self.dev_a, "root"])
            .output();
    }

    /// Packets dropped by a's qdisc so far (the link's own loss).
    pub fn dropped(&self) -> u64 {
        let out = Command::new("tc")
            .args(["-s", "-n", &self.a, "qdisc", "show", "dev", &self.dev_a])
            .output()
            .expect("tc");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("dropped ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Whether the kernel has netem (delay, loss, reordering); this machine's did not.
    pub fn has_netem(&self) -> bool {
        let out = Command::new("tc")
            .args([
                "-n",
                &self.a,
                "qdisc",
                "replace",
                "dev",
                &self.dev_a,
                "root",
                "netem",
                "delay",
                "1ms",
            ])
            .output()
            .expect("tc");
        let ok = out.status.success();
        self.unshape();
        ok
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and so the pair.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}
