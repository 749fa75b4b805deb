//! Two members on two hosts, each behind its own NAT, can reach each other only through the bubble's TURN relay,
//! and do: `peerbubble chat` processes on hosts built from Linux network namespaces, with iptables routers in
//! between, and the bubble-server on the "public" network.
//!
//! ```text
//!            pub 10.250.0.0/24 (bridge)  bubble-server 10.250.0.1 (signaling :8480, STUN/TURN :3478)
//!               /                     \
//!   rA out 10.250.0.2            rB out 10.250.0.3      symmetric NATs: MASQUERADE --random-fully, and only
//!   rA in  10.251.1.1            rB in  10.252.1.1      established/related traffic comes in
//!      |                             |
//!   hA 10.251.1.2 (alice)        hB 10.252.1.2 (bot)    default route via their router, nothing else
//! ```
//!
//! The routers are symmetric NATs because a port-preserving MASQUERADE maps endpoint-independently: ICE punches
//! through it (host to server-reflexive candidate) and the relay is never needed. The members are not in
//! relay-only mode: ICE has to find that host and server-reflexive candidates do not work and fall back to the
//! relayed ones (both on the server, relay-to-relay, which the peer policy allows for the server's own
//! allocations although 10/8 is private).
//!
//! Needs root (CAP_NET_ADMIN), `ip` and `iptables`; skips otherwise. Every namespace (and with it every veth and
//! iptables rule, which live inside them) carries this process's id and is deleted on drop, failure included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peerbubble_proto::IdentityKey;

const EXE: &str = env!("CARGO_BIN_EXE_peerbubble");
const SERVER_IP: &str = "10.250.0.1";
const SIGNAL_PORT: u16 = 8480;
const TURN_PORT: u16 = 3478;
/// The whole test, set-up included, stays within this.
const BUDGET: Duration = Duration::from_secs(75);

#[test]
fn members_behind_two_nats_talk_through_the_turn_relay() {
    let deadline = Instant::now() + BUDGET;
    if let Err(reason) = preflight() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let net = match Net::build() {
        Ok(net) => net,
        Err(Setup::Skip(reason)) => {
            eprintln!("SKIPPED: {reason}");
            return;
        }
        Err(Setup::Fail(reason)) => panic!("building the network: {reason}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let (alice, bot) = (IdentityKey::from_seed(&[31; 32]), IdentityKey::from_seed(&[32; 32]));
    let bubble = dir.path().join("bubble.yaml");
    std::fs::write(
        &bubble,
        format!(
            "bubble: nat\ncategories:\n  - {{id: team}}\nmembers:\n  - {{public_key: {}, display_name: alice, categories: [team]}}\n  - {{public_key: {}, display_name: bot, categories: [team]}}\n",
            alice.public_key(),
            bot.public_key()
        ),
    )
    .unwrap();
    let secret = dir.path().join("turn-secret");
    std::fs::write(&secret, b"nat test TURN secret, at least 32 bytes long").unwrap();
    let key_file = |name: &str, key: &IdentityKey| {
        let path = dir.path().join(format!("{name}.key"));
        std::fs::write(&path, format!("{}\n", key.to_seed_base64().as_str())).unwrap();
        path
    };
    let (alice_key, bot_key) = (key_file("alice", &alice), key_file("bot", &bot));
    let url = format!("ws://{SERVER_IP}:{SIGNAL_PORT}/v1/signal");
    let _logs = Logs(dir.path().to_owned());

    let (listen, turn_port) = (format!("{SERVER_IP}:{SIGNAL_PORT}"), TURN_PORT.to_string());
    let server_args = [
        "bubble-server",
        "--bubble-file",
        path(&bubble),
        "--listen",
        listen.as_str(),
        "--turn-secret-file",
        path(&secret),
        "--turn-udp-port",
        turn_port.as_str(),
        "--turn-tls-port",
        "0",
        "--turn-bind",
        SERVER_IP,
        "--turn-public-host",
        SERVER_IP,
    ]
    .map(str::to_owned);
    let _server = Proc::spawn("server", &net.ns("pub"), &server_args, dir.path(), false);
    while !metrics(&net.ns("pub")).is_some_and(|m| m.contains("peerbubble_turn_allocations")) {
        assert!(Instant::now() < deadline, "the bubble-server never answered /metrics with TURN metrics");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("server up on {listen} (TURN udp {SERVER_IP}:{TURN_PORT})");
    // Both hosts reach the server through their NAT; neither reaches the other host, nor is reachable from outside.
    for (from, to, port, expected) in [
        ("hA", SERVER_IP, SIGNAL_PORT, true),
        ("hB", SERVER_IP, SIGNAL_PORT, true),
        ("hA", "10.252.1.2", 9, false),
        ("hB", "10.251.1.2", 9, false),
        ("pub", "10.251.1.2", 9, false),
        ("pub", "10.252.1.2", 9, false),
    ] {
        assert_eq!(Net::reaches(&net.ns(from), to, port), expected, "{from} reaching {to}:{port}");
    }

    let chat = |key: &Path, echo: bool| {
        let mut args = vec!["chat".to_owned(), "--url".into(), url.clone(), "--key".into(), path(key).into()];
        if echo {
            args.push("--echo".into());
        }
        args
    };
    let mut bot_proc = Proc::spawn("bot", &net.ns("hB"), &chat(&bot_key, true), dir.path(), false);
    bot_proc.expect("the bot to connect", deadline, |l| l.starts_with("connected as"));
    let mut me = Proc::spawn("alice", &net.ns("hA"), &chat(&alice_key, false), dir.path(), true);
    me.expect("alice to connect", deadline, |l| l.starts_with("connected as"));
    me.send("/open bot");
    me.expect("the MLS conversation", deadline, |l| l == "* conversation with bot ready (MLS)");
    let first = "hello through two NATs";
    me.send(first);
    me.expect("the echo of the first line", deadline, |l| l == format!("[bot] echo: {first}"));
    eprintln!("first line echoed (the DataChannel may not be up yet)");
    let channel = me.expect_unless(
        "a DataChannel with the bot",
        deadline,
        |l| l == "* direct connection with bot (DTLS fingerprint verified)",
        |l| l.starts_with("* direct connection with bot closed"),
    );
    assert!(channel.is_some(), "ICE found no path between the two NATs (not even the relay): see the logs below");
    eprintln!("DataChannel open");

    let before = metrics(&net.ns("pub")).expect("metrics before the second line");
    let second = "this one rides the DataChannel through the relay";
    me.send(second);
    me.expect("the echo of the second line", deadline, |l| l == format!("[bot] echo: {second}"));
    let after = metrics(&net.ns("pub")).expect("metrics after the second line");
    let value = |text: &str, name: &str| {
        sample(text, name).unwrap_or_else(|| panic!("no sample {name} in the metrics:\n{text}"))
    };
    let summary: Vec<String> = [
        "peerbubble_turn_allocations",
        "peerbubble_turn_packets_total{direction=\"to_peer\"}",
        "peerbubble_turn_packets_total{direction=\"to_client\"}",
        "peerbubble_signal_envelopes_relayed_total",
    ]
    .iter()
    .map(|name| format!("{name} {} -> {}", value(&before, name), value(&after, name)))
    .collect();
    eprintln!("metrics around the second line:\n  {}", summary.join("\n  "));

    // Both members hold an allocation on the bubble's relay, and it carried their traffic.
    assert!(value(&after, "peerbubble_turn_allocations") >= 2.0, "both members allocate on the relay");
    for direction in ["to_peer", "to_client"] {
        let packets = format!("peerbubble_turn_packets_total{{direction=\"{direction}\"}}");
        assert!(
            value(&after, &packets) > value(&before, &packets),
            "the second line and its echo crossed the relay ({packets} did not grow)"
        );
    }
    // ... and not signaling: the second line went over the (relayed) DataChannel.
    let envelopes = "peerbubble_signal_envelopes_relayed_total";
    assert_eq!(value(&after, envelopes), value(&before, envelopes), "the second line went over signaling");
    // The NATs are real: ICE tried the direct paths, and the routers refused what came in unasked.
    let refused = net.refused_inbound();
    eprintln!("unsolicited inbound packets dropped by the routers: {refused}");
    assert!(refused > 0, "ICE's direct attempts never reached a router: the topology does not test what it should");

    me.send("/quit");
}

/// Why the test cannot run here, if it cannot.
fn preflight() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("no /proc/self/status: {e}"))?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
    if uid != Some("0") {
        return Err("not root (network namespaces need CAP_NET_ADMIN)".into());
    }
    for tool in [["ip", "-V"], ["iptables", "--version"], ["bash", "--version"]] {
        run(&tool).map_err(|e| format!("{} is missing or broken: {e}", tool[0]))?;
    }
    Ok(())
}

enum Setup {
    Skip(String),
    Fail(String),
}

/// The namespaces of one run, deleted on drop (their veths and iptables rules go with them).
struct Net {
    prefix: String,
    made: Vec<String>,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn build() -> Result<Self, Setup> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let mut net = Net { prefix: format!("pbnat{}x{}", std::process::id(), nanos % 100_000), made: Vec::new() };
        for name in ["pub", "rA", "rB", "hA", "hB"] {
            let ns = net.ns(name);
            if let Err(e) = run(&["ip", "netns", "add", &ns]) {
                return Err(Setup::Skip(format!("ip netns add failed (no CAP_NET_ADMIN?): {e}")));
            }
            net.made.push(ns.clone());
            // IPv4 only, so that no IPv6 path can bypass the NATs (best effort: a kernel may have no IPv6).
            let _ = net.exec(
                &ns,
                &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
            );
            net.ip(&ns, "link set lo up").map_err(Setup::Fail)?;
        }
        let public = net.ns("pub");
        net.ip(&public, "link add name br0 type bridge").map_err(Setup::Fail)?;
        net.ip(&public, &format!("addr add {SERVER_IP}/24 dev br0")).map_err(Setup::Fail)?;
        net.ip(&public, "link set br0 up").map_err(Setup::Fail)?;
        for (side, outside, inside) in [("A", "10.250.0.2", "10.251.1"), ("B", "10.250.0.3", "10.252.1")] {
            net.router(side, outside, inside)?;
        }
        Ok(net)
    }

    /// Router `r<side>` with its outside leg on the public bridge and its host `h<side>` on `<inside>.0/24`.
    fn router(&self, side: &str, outside: &str, inside: &str) -> Result<(), Setup> {
        let (public, router, host) = (self.ns("pub"), self.ns(&format!("r{side}")), self.ns(&format!("h{side}")));
        for (ns, cmd) in [
            (&public, format!("link add name to-r{side} type veth peer name out netns {router}")),
            (&public, format!("link set to-r{side} master br0 up")),
            (&router, format!("addr add {outside}/24 dev out")),
            (&router, "link set out up".to_owned()),
            (&router, format!("link add name in type veth peer name eth0 netns {host}")),
            (&router, format!("addr add {inside}.1/24 dev in")),
            (&router, "link set in up".to_owned()),
            (&host, format!("addr add {inside}.2/24 dev eth0")),
            (&host, "link set eth0 up".to_owned()),
            (&host, format!("route add default via {inside}.1")),
        ] {
            self.ip(ns, &cmd).map_err(Setup::Fail)?;
        }
        self.exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).map_err(Setup::Fail)?;
        for rule in [
            "-t nat -A POSTROUTING -o out -j MASQUERADE --random-fully",
            "-P FORWARD DROP",
            "-A FORWARD -i in -o out -j ACCEPT",
            "-A FORWARD -i out -o in -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A FORWARD -i out -j DROP",
            "-A INPUT -i out -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A INPUT -i out -j DROP",
        ] {
            let mut args = vec!["iptables"];
            args.extend(rule.split(' '));
            self.exec(&router, &args).map_err(|e| Setup::Skip(format!("iptables cannot make the NAT: {e}")))?;
        }
        Ok(())
    }

    fn ip(&self, ns: &str, cmd: &str) -> Result<(), String> {
        let mut args = vec!["ip", "-n", ns];
        args.extend(cmd.split(' '));
        run(&args).map(drop)
    }

    fn exec(&self, ns: &str, cmd: &[&str]) -> Result<String, String> {
        let mut args = vec!["ip", "netns", "exec", ns];
        args.extend(cmd);
        run(&args)
    }

    /// Whether a TCP connection from `ns` to `ip:port` gets any answer (a refusal counts) within a second.
    fn reaches(ns: &str, ip: &str, port: u16) -> bool {
        let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
        let out = Command::new("ip").args(["netns", "exec", ns, "timeout", "1", "bash", "-c", &script]).output();
        out.is_ok_and(|o| o.status.success() || String::from_utf8_lossy(&o.stderr).contains("refused"))
    }

    /// Packets the routers' DROP rules refused (unsolicited inbound on their outside legs).
    fn refused_inbound(&self) -> u64 {
        let mut total = 0;
        for router in ["rA", "rB"] {
            let listing = self.exec(&self.ns(router), &["iptables", "-L", "-v", "-x", "-n"]).unwrap_or_default();
            for line in listing.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(2) == Some(&"DROP") {
                    total += fields[0].parse::<u64>().unwrap_or(0);
                }
            }
        }
        total
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(e) = run(&["ip", "netns", "del", ns]) {
                eprintln!("cleanup: cannot delete namespace {ns}: {e}");
            }
        }
    }
}

/// Runs a command; its standard output, or what went wrong.
fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// `GET /metrics` from inside `ns` (bash's /dev/tcp: the namespaces have no curl, and this process is not in them).
fn metrics(ns: &str) -> Option<String> {
    let script = format!(
        "exec 3<>/dev/tcp/{SERVER_IP}/{SIGNAL_PORT} && printf 'GET /metrics HTTP/1.0\\r\\nHost: {SERVER_IP}:{SIGNAL_PORT}\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = Command::new("ip").args(["netns", "exec", ns, "timeout", "5", "bash", "-c", &script]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && text.starts_with("HTTP/1.") && text.contains(" 200 ")).then_some(text)
}

/// The value of one sample (`name` with its labels, exactly as exposed).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A `peerbubble` process inside a namespace, killed on drop; standard error goes to `<dir>/<name>.log`.
struct Proc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &'static str, ns: &str, args: &[String], dir: &Path, with_stdin: bool) -> Self {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        // `ip netns exec` execs the command: the child is the peerbubble process itself.
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, EXE])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(if with_stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Self { name, child, stdin, lines, seen: Vec::new() }
    }

    /// Waits until a line of standard output (this one or one already printed) matches.
    fn expect(&mut self, what: &str, deadline: Instant, pred: impl Fn(&str) -> bool) -> String {
        self.expect_unless(what, deadline, pred, |_| false).expect("a matching line")
    }

    /// Like [`Proc::expect`], but `None` as soon as a line matching `bad` comes first.
    fn expect_unless(
        &mut self,
        what: &str,
        deadline: Instant,
        pred: impl Fn(&str) -> bool,
        bad: impl Fn(&str) -> bool,
    ) -> Option<String> {
        for line in &self.seen {
            if pred(line) {
                return Some(line.clone());
            }
            if bad(line) {
                return None;
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("  {}> {line}", self.name);
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                    if bad(&line) {
                        return None;
                    }
                }
                Err(e) => panic!(
                    "waiting for {what} from {} ({}): it printed {:?}",
                    self.name,
                    if e == mpsc::RecvTimeoutError::Timeout { "timed out" } else { "it exited" },
                    self.seen
                ),
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("a process started with stdin");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).unwrap_or_else(|e| panic!("{}: {e}", self.name));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On failure, prints the end of every process's log.
struct Logs(PathBuf);

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for name in ["server", "bot", "alice"] {
            let text = std::fs::read_to_string(self.0.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {name} log (last 40 lines) ----");
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}
