//! `cargo xtask bench <name>`: benchmarks that report ratios against a baseline measured in the same run.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{cargo, sh};

pub(crate) fn bench(root: &Path, name: Option<&str>, rest: &[String]) -> anyhow::Result<()> {
    match name {
        Some("signaling") => signaling(root, rest),
        Some("soak") => soak(root, rest),
        Some("mailbox") => mailbox(rest),
        Some("operator") => operator(),
        Some("turn") => crate::bench_turn::turn(root, rest),
        Some("e2ee") => e2ee(rest),
        Some("directory") => directory(rest),
        Some("micronode") => micronode(rest),
        Some("browser") => crate::web::bench_browser(rest),
        Some("browser-media") => crate::web::bench_browser_media(rest),
        _ => bail!(
            "usage: cargo xtask bench signaling [--pairs N] [--window W] [--seconds S] [--rounds R] [--idle N]\n       \
             cargo xtask bench signaling --replicas 2 [--pairs N] [--window W] [--seconds S] [--drain N]\n       \
             cargo xtask bench soak [--sessions N] [--seconds S]\n       \
             cargo xtask bench mailbox [--envelopes N] [--bytes B]\n       \
             cargo xtask bench operator\n       \
             cargo xtask bench turn [--clients M] [--messages N] [--length L] [--rounds R] [--allocations A] [--paced-messages P]\n       \
             cargo xtask bench e2ee [--messages N] [--message-bytes B] [--megabytes M] [--rounds R]\n       \
             cargo xtask bench directory [--members N] [--categories C] [--rounds R]\n       \
             cargo xtask bench micronode [--rounds R]\n       \
             cargo xtask bench browser [--rounds R] [--messages N]"
        ),
    }
}

/// 1 000 Bubbles x 5 Categories against the in-process API server (crates/operator/benches/operator.rs).
fn operator() -> anyhow::Result<()> {
    sh(cargo().args(["bench", "--package", "peerbubble-operator", "--bench", "operator"]))
}

/// The offline mailbox: envelopes kept for an absent member and drained on its return, against live relaying
/// (crates/bubble-server/benches/mailbox.rs).
fn mailbox(rest: &[String]) -> anyhow::Result<()> {
    sh(cargo().args(["bench", "--package", "peerbubble-bubble-server", "--bench", "mailbox", "--"]).args(rest))
}

/// One member's slice at 100 000 members, and a poll that finds nothing changed against a full read
/// (crates/admin-api/benches/directory.rs).
fn directory(rest: &[String]) -> anyhow::Result<()> {
    sh(cargo().args(["bench", "--package", "peerbubble-admin-api", "--bench", "directory", "--"]).args(rest))
}

/// `peerbubble up` as the Debian package ships it (server build, `dist` profile): start to ready, idle memory,
/// binary size. Each round starts on a fresh data directory (the database made, migrations run, demo invites
/// written: a first start) and once more on the same directory (a restart); ready is when both the signaling
/// listener and the admin API answer `/readyz`, polled every millisecond.
fn micronode(rest: &[String]) -> anyhow::Result<()> {
    let mut rounds = 5;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value: usize = it.next().with_context(|| format!("{flag} needs a value"))?.parse()?;
        match flag.as_str() {
            "--rounds" => rounds = value.max(1),
            _ => bail!("unknown flag {flag}"),
        }
    }
    crate::web_tools()?;
    crate::web::build()?;
    let binary = crate::dist::build(crate::dist::Arch::X86_64)?;
    let work = std::env::temp_dir().join(format!("peerbubble-micronode-{}", std::process::id()));
    let (mut first, mut restart, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let data = work.join(format!("round-{round}"));
        for (samples, measure_rss) in [(&mut first, false), (&mut restart, true)] {
            let (listen, admin) = (free_port()?, free_port()?);
            let started = Instant::now();
            let mut node = Guard(
                Command::new(&binary)
                    .args(["up", "--listen", &format!("127.0.0.1:{listen}"), "--admin-listen"])
                    .arg(format!("127.0.0.1:{admin}"))
                    .args(["--turn-port", "0", "--turn-tls-port", "0", "--data-dir"])
                    .arg(&data)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
            for port in [listen, admin] {
                // Polled every millisecond: start-up is what is measured.
                wait_http_ok_every(SocketAddr::from(([127, 0, 0, 1], port)), "/readyz", Duration::from_millis(1))?;
            }
            samples.push(started.elapsed().as_secs_f64() * 1e3);
            if measure_rss {
                // Idle: nobody connected, the directory follower and health reporter ticking.
                std::thread::sleep(Duration::from_secs(3));
                rss.push(rss_kib(node.0.id())? as f64 * 1024.0 / 1e6);
            }
            let _ = Command::new("kill").args(["-TERM", &node.0.id().to_string()]).status();
            let _ = node.0.wait();
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let binary_mb = std::fs::metadata(&binary)?.len() as f64 / 1e6;
    let (first, restart, rss) = (median(&mut first), median(&mut restart), median(&mut rss));
    println!("  first start {first:.0} ms, restart {restart:.0} ms (medians of {rounds}), {}", binary.display());
    println!(
        "bench micronode: idle_rss_mb={rss:.1} ready_ms={first:.0} restart_ready_ms={restart:.0} binary_mb={binary_mb:.1}"
    );
    Ok(())
}

/// MLS cost per message and encrypted file transfer vs a raw DataChannel (crates/peer/benches/e2ee.rs).
fn e2ee(rest: &[String]) -> anyhow::Result<()> {
    sh(cargo().args(["bench", "--package", "peerbubble-peer", "--bench", "e2ee", "--"]).args(rest))
}

struct Settings {
    pairs: u32,
    window: u32,
    seconds: u64,
    rounds: u32,
    idle: u32,
    replicas: u32,
    drain: u32,
}

fn settings(rest: &[String]) -> anyhow::Result<Settings> {
    let mut s = Settings { pairs: 50, window: 16, seconds: 10, rounds: 2, idle: 10_000, replicas: 1, drain: 10_000 };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value: u64 = it.next().with_context(|| format!("{flag} needs a value"))?.parse()?;
        match flag.as_str() {
            "--pairs" => s.pairs = value as u32,
            "--window" => s.window = value as u32,
            "--seconds" => s.seconds = value,
            "--rounds" => s.rounds = value as u32,
            "--idle" => s.idle = value as u32,
            "--replicas" => s.replicas = value as u32,
            "--drain" => s.drain = value as u32,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(s)
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills the child when dropped, so that a failed benchmark leaves nothing running.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("no VmRSS value")?.parse()?)
}

pub(crate) fn wait_http_ok(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    wait_http_ok_every(addr, path, Duration::from_millis(50))
}

/// Waits up to 30 s for `GET path` to answer 200 on `addr`, trying every `poll`.
fn wait_http_ok_every(addr: SocketAddr, path: &str, poll: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut line = String::new();
            if BufReader::new(stream).read_line(&mut line).is_ok() && line.contains(" 200 ") {
                return Ok(());
            }
        }
        std::thread::sleep(poll);
    }
    bail!("{addr}{path} did not become ready")
}

fn wait_line(child: &mut Child, prefix: &str) -> anyhow::Result<String> {
    let stdout = child.stdout.as_mut().context("no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("process ended before printing {prefix:?}");
        }
        if line.starts_with(prefix) {
            return Ok(line.trim().to_owned());
        }
    }
}

pub(crate) fn json_number(line: &str, key: &str) -> anyhow::Result<f64> {
    let at = line.find(&format!("\"{key}\":")).with_context(|| format!("{key} missing in {line}"))?;
    let rest = &line[at + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Ok(rest[..end].parse()?)
}

struct Relay {
    per_s: f64,
    p50: f64,
    p99: f64,
}

fn relay(loadgen: &Path, target: &str, url: &str, s: &Settings) -> anyhow::Result<Relay> {
    relay_to(loadgen, target, url, None, s)
}

/// The relay workload; with `url_b`, every pair's second member connects there (another replica).
fn relay_to(loadgen: &Path, target: &str, url: &str, url_b: Option<&str>, s: &Settings) -> anyhow::Result<Relay> {
    let mut command = Command::new(loadgen);
    command.args(["relay", "--target", target, "--url", url]);
    if let Some(url_b) = url_b {
        command.args(["--url-b", url_b]);
    }
    let output = command
        .args(["--pairs", &s.pairs.to_string(), "--window", &s.window.to_string(), "--seconds", &s.seconds.to_string()])
        .output()?;
    if !output.status.success() {
        bail!("loadgen relay {target} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    println!("  {line}");
    Ok(Relay {
        per_s: json_number(&line, "envelopes_per_s")?,
        p50: json_number(&line, "p50_ms")?,
        p99: json_number(&line, "p99_ms")?,
    })
}

/// Bytes of server RSS per idle connection, `count` connections held by one loadgen process.
fn idle_memory(loadgen: &Path, target: &str, url: &str, server_pid: u32, count: u32) -> anyhow::Result<f64> {
    let before = rss_kib(server_pid)?;
    let mut child = Command::new(loadgen)
        .args(["idle", "--target", target, "--url", url, "--count", &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let ready = wait_line(&mut child, "ready");
    // Let the server settle (buffers of the handshake released) before reading its RSS.
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(server_pid)?;
    drop(child.stdin.take());
    let _ = child.wait();
    ready?;
    let per_conn = (after.saturating_sub(before) * 1024) as f64 / f64::from(count);
    println!("  {target}: RSS {before} KiB -> {after} KiB with {count} idle connections = {per_conn:.0} B/connection");
    Ok(per_conn)
}

/// Limits opened up for the relay benchmarks: the baseline has none, and they measure the relay path, not the
/// limiter.
const OPEN_LIMITS: [&str; 10] = [
    "--frames-per-second",
    "10000000",
    "--frame-burst",
    "10000000",
    "--member-frames-per-second",
    "10000000",
    "--idle-timeout-secs",
    "600",
    "--max-connections",
    "19000",
];

fn signaling(root: &Path, rest: &[String]) -> anyhow::Result<()> {
    let s = settings(rest)?;
    sh(cargo().args(["build", "--release", "--package", "peerbubble", "--package", "peerbubble-peer"]))?;
    if s.replicas > 1 {
        return signaling_replicas(root, &s);
    }
    let release = target_dir(root).join("release");
    let (server_bin, loadgen) = (release.join("peerbubble"), release.join("peerbubble-loadgen"));

    let peerjs_dir = root.join("bench/peerjs");
    crate::npm_ci(&peerjs_dir)?;

    let work = std::env::temp_dir().join(format!("peerbubble-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let bubble = work.join("bubble.yaml");
    let members = s.pairs.max(s.idle.div_ceil(2));
    sh(Command::new(&loadgen).args(["bubble", "--pairs", &members.to_string(), "--out"]).arg(&bubble))?;

    let ours_port = free_port()?;
    let ours = Guard(
        Command::new(&server_bin)
            .args(["bubble-server", "--listen", &format!("127.0.0.1:{ours_port}"), "--bubble-file"])
            .arg(&bubble)
            .args(OPEN_LIMITS)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_http_ok(SocketAddr::from(([127, 0, 0, 1], ours_port)), "/readyz")?;
    let peerjs_port = free_port()?;
    let mut peerjs = Guard(
        Command::new("node")
            .arg(peerjs_dir.join("server.cjs"))
            .arg(peerjs_port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start node: install Node.js 20+")?,
    );
    wait_line(&mut peerjs.0, "ready")?;
    let ours_url = format!("ws://127.0.0.1:{ours_port}/v1/signal");
    let peerjs_url = format!("ws://127.0.0.1:{peerjs_port}/peerjs");

    println!(
        "\nrelay: {} pairs, window {}, 1 KiB envelopes echoed, {} s per run, {} rounds alternating",
        s.pairs, s.window, s.seconds, s.rounds
    );
    let (mut ours_runs, mut peerjs_runs) = (Vec::new(), Vec::new());
    for _ in 0..s.rounds {
        ours_runs.push(relay(&loadgen, "ours", &ours_url, &s)?);
        peerjs_runs.push(relay(&loadgen, "peerjs", &peerjs_url, &s)?);
    }
    let mean = |runs: &[Relay], f: fn(&Relay) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    let (ours_rate, peerjs_rate) = (mean(&ours_runs, |r| r.per_s), mean(&peerjs_runs, |r| r.per_s));
    let (ours_p50, peerjs_p50) = (mean(&ours_runs, |r| r.p50), mean(&peerjs_runs, |r| r.p50));
    let (ours_p99, peerjs_p99) = (mean(&ours_runs, |r| r.p99), mean(&peerjs_runs, |r| r.p99));

    println!("\nidle connections: {}", s.idle);
    let ours_idle = idle_memory(&loadgen, "ours", &ours_url, ours.0.id(), s.idle)?;
    let peerjs_idle = idle_memory(&loadgen, "peerjs", &peerjs_url, peerjs.0.id(), s.idle)?;
    drop((ours, peerjs));
    let _ = std::fs::remove_dir_all(&work);

    println!("\n| | PeerBubble | PeerJS |\n|---|---|---|");
    println!("| envelopes/s | {ours_rate:.0} | {peerjs_rate:.0} |");
    println!("| round trip p50 (ms) | {ours_p50:.2} | {peerjs_p50:.2} |");
    println!("| round trip p99 (ms) | {ours_p99:.2} | {peerjs_p99:.2} |");
    println!("| RSS per idle connection (bytes) | {ours_idle:.0} | {peerjs_idle:.0} |\n");
    println!(
        "bench signaling: ours={ours_rate:.0} peerjs={peerjs_rate:.0} ratio={:.2} p99_ours_ms={ours_p99:.2} p99_peerjs_ms={peerjs_p99:.2} idle_bytes_ours={ours_idle:.0} idle_bytes_peerjs={peerjs_idle:.0}",
        ours_rate / peerjs_rate
    );
    Ok(())
}

/// The relay workload with every pair split across two replicas sharing state over NATS (JetStream), against
/// the same workload on one bubble-server alone, in alternating rounds; then the offline mailbox's drain: `drain`
/// envelopes kept for an absent member, delivered when it connects (issue 17).
fn signaling_replicas(root: &Path, s: &Settings) -> anyhow::Result<()> {
    let release = target_dir(root).join("release");
    let (server_bin, loadgen) = (release.join("peerbubble"), release.join("peerbubble-loadgen"));
    let nats_bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("nats-server is not installed (Debian package nats-server; `cargo xtask test` installs it)")?;
    let work = std::env::temp_dir().join(format!("peerbubble-bench-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let bubble = work.join("bubble.yaml");
    sh(Command::new(&loadgen).args(["bubble", "--pairs", &s.pairs.to_string(), "--out"]).arg(&bubble))?;

    let nats_port = free_port()?;
    let _nats = Guard(
        Command::new(&nats_bin)
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string(), "-js", "-sd"])
            .arg(work.join("jetstream"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let start = |extra: &[&str]| -> anyhow::Result<(Guard, String)> {
        let port = free_port()?;
        let child = Command::new(&server_bin)
            .args(["bubble-server", "--listen", &format!("127.0.0.1:{port}"), "--bubble-file"])
            .arg(&bubble)
            .args(OPEN_LIMITS)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        let guard = Guard(child);
        wait_http_ok(SocketAddr::from(([127, 0, 0, 1], port)), "/readyz")?;
        Ok((guard, format!("ws://127.0.0.1:{port}/v1/signal")))
    };
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let (_single, single_url) = start(&[])?;
    let (_one, one_url) = start(&["--nats", &nats_url])?;
    let (_two, two_url) = start(&["--nats", &nats_url])?;
    // Presence crosses replicas within a heartbeat or so; the pairs must see each other before they send.
    std::thread::sleep(Duration::from_secs(2));

    println!(
        "\nrelay: {} pairs, window {}, 1 KiB envelopes echoed, {} s per run, {} rounds alternating; \
         cross = each pair's members on two replicas sharing NATS, single = one bubble-server alone",
        s.pairs, s.window, s.seconds, s.rounds
    );
    let (mut single_runs, mut cross_runs) = (Vec::new(), Vec::new());
    for _ in 0..s.rounds {
        single_runs.push(relay(&loadgen, "ours", &single_url, s)?);
        cross_runs.push(relay_to(&loadgen, "ours", &one_url, Some(&two_url), s)?);
    }
    let mean = |runs: &[Relay], f: fn(&Relay) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    let (single, cross) = (mean(&single_runs, |r| r.per_s), mean(&cross_runs, |r| r.per_s));
    let (p99_single, p99_cross) = (mean(&single_runs, |r| r.p99), mean(&cross_runs, |r| r.p99));

    println!("\nmailbox drain: {} envelopes of 1 KiB kept for an absent member, then delivered", s.drain);
    let (_keeper, keeper_url) = start(&[
        "--mailbox",
        &work.join("mailbox.sqlite").display().to_string(),
        "--mailbox-member-entries",
        &s.drain.max(20_000).to_string(),
        "--mailbox-member-bytes",
        &(64u64 << 20).to_string(),
        "--mailbox-total-bytes",
        &(256u64 << 20).to_string(),
    ])?;
    let drain = |url: &str, what: &str| -> anyhow::Result<f64> {
        let output = Command::new(&loadgen)
            .args(["drain", "--url", url, "--count", &s.drain.to_string(), "--window", "256"])
            .output()?;
        if !output.status.success() {
            bail!("loadgen drain ({what}) failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        println!("  {what}: {line}");
        json_number(&line, "per_s")
    };
    let drain_file = drain(&keeper_url, "one bubble-server, SQLite file")?;
    // The replicas' mailbox: in the bubble's JetStream stream (ADR 0024 decision 9), kept through one replica,
    // read back through the same.
    let (_shared, shared_url) = start(&[
        "--nats",
        &nats_url,
        "--mailbox-jetstream",
        "--mailbox-member-entries",
        &s.drain.max(20_000).to_string(),
        "--mailbox-total-bytes",
        &(256u64 << 20).to_string(),
    ])?;
    let drain_per_s = drain(&shared_url, "replica, JetStream")?;
    let _ = std::fs::remove_dir_all(&work);

    println!("\n| | one bubble-server | two replicas on NATS |\n|---|---|---|");
    println!("| envelopes/s | {single:.0} | {cross:.0} |");
    println!("| round trip p99 (ms) | {p99_single:.2} | {p99_cross:.2} |");
    println!(
        "| mailbox drain, {} envelopes (/s) | {drain_file:.0} (SQLite) | {drain_per_s:.0} (JetStream) |\n",
        s.drain
    );
    println!(
        "bench signaling-replicas: single={single:.0} cross={cross:.0} ratio={:.2} p99_cross_ms={p99_cross:.2} \
         drain_per_s={drain_per_s:.0}",
        cross / single
    );
    Ok(())
}

/// Sessions opened and ended by every close path, in rounds, against the release `peerbubble bubble-server`;
/// afterwards nothing may stay registered, and the server's memory must not grow round after round (issue 13).
fn soak(root: &Path, rest: &[String]) -> anyhow::Result<()> {
    let (mut sessions, mut seconds) = (10_000u32, 180u64);
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value: u64 = it.next().with_context(|| format!("{flag} needs a value"))?.parse()?;
        match flag.as_str() {
            "--sessions" => sessions = value as u32,
            "--seconds" => seconds = value,
            _ => bail!("unknown flag {flag}"),
        }
    }
    sh(cargo().args(["build", "--release", "--package", "peerbubble", "--package", "peerbubble-peer"]))?;
    let release = target_dir(root).join("release");
    let (server_bin, loadgen) = (release.join("peerbubble"), release.join("peerbubble-loadgen"));
    let work = std::env::temp_dir().join(format!("peerbubble-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let bubble = work.join("bubble.yaml");
    sh(Command::new(&loadgen).args(["bubble", "--pairs", &sessions.div_ceil(4).to_string(), "--out"]).arg(&bubble))?;
    let port = free_port()?;
    let server = Guard(
        Command::new(&server_bin)
            .args(["bubble-server", "--listen", &format!("127.0.0.1:{port}"), "--bubble-file"])
            .arg(&bubble)
            // Small frames so that oversized ones are cheap; an idle timeout longer than a round's logins.
            .args(["--max-frame-bytes", "4096", "--idle-timeout-secs", "15", "--max-connections", "19000"])
            .args(["--reload-interval-ms", "200"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_http_ok(SocketAddr::from(([127, 0, 0, 1], port)), "/readyz")?;
    println!("\nsoak: {sessions} sessions a round, every close path, for {seconds} s");
    let status = Command::new(&loadgen)
        .args(["soak", "--url", &format!("ws://127.0.0.1:{port}/v1/signal"), "--count", &sessions.to_string()])
        .args(["--seconds", &seconds.to_string(), "--server-pid", &server.0.id().to_string(), "--out"])
        .arg(&bubble)
        .status()?;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
    if !status.success() {
        bail!("soak failed");
    }
    Ok(())
}
