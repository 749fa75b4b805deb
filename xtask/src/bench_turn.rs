//! `cargo xtask bench turn`: the embedded TURN relay against coturn, both on loopback in the same run, driven
//! alternately by the same client (coturn's turnutils_uclient) with the same clients, message count and size,
//! relaying to coturn's turnutils_peer echo server.
//!
//! uclient paces itself and waits seconds for stragglers, so wall time says more about the client than about
//! the server. What the server spends is its CPU time: messages/s is messages echoed (each relayed twice, to the
//! peer and back) per second of the server process's CPU (user + system, all threads, from /proc), i.e. what
//! one core of this machine relays. Loss is what uclient counts as sent and never received back, at full
//! speed (where the client, the peer and both servers fight for the same cores) and at a paced rate (one message
//! per millisecond per client), where a relay should lose nothing.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::bench::{Guard, free_port, rss_kib, target_dir, wait_http_ok};
use crate::{cargo, sh};

struct Settings {
    clients: u32,
    messages: u32,
    length: u32,
    rounds: u32,
    allocations: u32,
    paced: u32,
}

fn settings(rest: &[String]) -> anyhow::Result<Settings> {
    let mut s = Settings { clients: 10, messages: 5_000, length: 1000, rounds: 3, allocations: 200, paced: 3_000 };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value: u32 = it.next().with_context(|| format!("{flag} needs a value"))?.parse()?;
        match flag.as_str() {
            "--clients" => s.clients = value,
            "--messages" => s.messages = value,
            "--length" => s.length = value,
            "--rounds" => s.rounds = value,
            "--allocations" => s.allocations = value,
            "--paced-messages" => s.paced = value,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(s)
}

/// 40 characters: both servers take it as is (coturn as text, ours as bytes).
const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

#[derive(Clone, Copy)]
struct Load {
    clients: u32,
    messages: u32,
    length: u32,
}

struct Run {
    seconds: f64,
    sent: u64,
    received: u64,
}

/// `interval_ms`: each client's pause between messages, 0 for as fast as it can.
fn uclient(port: u16, peer: u16, user: &str, load: Load, interval_ms: u32) -> anyhow::Result<Run> {
    let Load { clients, messages, length } = load;
    let started = Instant::now();
    let output = Command::new("turnutils_uclient")
        .args(["-c", "-W", SECRET, "-u", user, "-e", "127.0.0.1", "-r", &peer.to_string(), "-p", &port.to_string()])
        .args(["-m", &clients.to_string(), "-n", &messages.to_string(), "-l", &length.to_string()])
        .args(["-z", &interval_ms.to_string()])
        .arg("127.0.0.1")
        .output()
        .context("turnutils_uclient (Debian package coturn)")?;
    let seconds = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let number = |needle: &str| -> u64 {
        text.lines()
            .rev()
            .find_map(|line| {
                let rest = &line[line.find(needle)? + needle.len()..];
                rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            })
            .unwrap_or(0)
    };
    Ok(Run { seconds, sent: number("tot_send_msgs="), received: number("tot_recv_msgs=") })
}

/// Waits until a STUN Binding on `port` is answered.
fn wait_stun(port: u16) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let binding = [0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    let mut buf = [0u8; 512];
    for _ in 0..100 {
        socket.send_to(&binding, ("127.0.0.1", port))?;
        if socket.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("no STUN answer on port {port}")
}

struct Measured {
    rate: f64,
    lost: u64,
    wall: f64,
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")": utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').context("no ) in stat")?.1.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11).context("utime")?.parse::<f64>()? + fields.get(12).context("stime")?.parse::<f64>()?;
    let hz = Command::new("getconf").arg("CLK_TCK").output()?;
    let hz: f64 = String::from_utf8_lossy(&hz.stdout).trim().parse().unwrap_or(100.0);
    Ok(ticks / hz)
}

fn measure(pid: u32, port: u16, peer: u16, user: &str, load: Load, interval_ms: u32) -> anyhow::Result<Measured> {
    let before = cpu_seconds(pid)?;
    let run = uclient(port, peer, user, load, interval_ms)?;
    let cpu = cpu_seconds(pid)? - before;
    if run.received == 0 {
        bail!("nothing relayed through port {port}");
    }
    Ok(Measured { rate: run.received as f64 / cpu.max(0.01), lost: run.sent - run.received, wall: run.seconds })
}

/// Resident memory added by `count` allocations that stay alive after the client is gone, per allocation.
/// Measured first, on fresh processes, so that memory freed by earlier runs does not hide it.
fn memory_per_allocation(pid: u32, port: u16, peer: u16, user: &str, count: u32) -> anyhow::Result<f64> {
    let before = rss_kib(pid)?;
    uclient(port, peer, user, Load { clients: count, messages: 5, length: 100 }, 0)?;
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid)?;
    Ok(after.saturating_sub(before) as f64 * 1024.0 / f64::from(count))
}

pub(crate) fn turn(root: &Path, rest: &[String]) -> anyhow::Result<()> {
    let s = settings(rest)?;
    crate::debian_packages()?;
    sh(cargo().args(["build", "--release", "--package", "peerbubble"]))?;
    let bin = target_dir(root).join("release/peerbubble");

    let work = std::env::temp_dir().join(format!("peerbubble-bench-turn-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let keygen = Command::new(&bin).args(["keygen", "--out"]).arg(work.join("bench.key")).output()?;
    let keygen = String::from_utf8_lossy(&keygen.stdout).into_owned();
    let field = |name: &str| {
        keygen.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).map(str::to_owned).context("keygen output")
    };
    let (public_key, member) = (field("public_key:")?, field("member_id:")?);
    let bubble = work.join("bubble.yaml");
    std::fs::write(
        &bubble,
        format!(
            "bubble: bench\ncategories:\n  - {{id: all}}\nmembers:\n  - {{public_key: {public_key}, display_name: Bench, categories: [all]}}\n"
        ),
    )?;
    std::fs::write(work.join("turn-secret"), SECRET)?;

    let (signal_port, ours_port, coturn_port, peer_port) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let ours = Guard(
        Command::new(&bin)
            .args(["bubble-server", "--listen", &format!("127.0.0.1:{signal_port}"), "--bubble-file"])
            .arg(&bubble)
            .arg("--turn-secret-file")
            .arg(work.join("turn-secret"))
            .args(["--turn-udp-port", &ours_port.to_string(), "--turn-tls-port", "0"])
            // The same openings coturn gets: loopback peers, no bandwidth cap, no per-user quota.
            .args(["--turn-allow-peers", "127.0.0.0/8", "--turn-bandwidth", "0"])
            .args(["--turn-max-allocations-per-member", "100000", "--turn-max-allocations", "100000"])
            .args(["--turn-relay-ports", "50000-59999"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_http_ok(SocketAddr::from(([127, 0, 0, 1], signal_port)), "/readyz")?;
    wait_stun(ours_port)?;
    let coturn = Guard(
        Command::new("turnserver")
            .args(["--listening-ip", "127.0.0.1", "--listening-port", &coturn_port.to_string()])
            .args(["--relay-ip", "127.0.0.1", "--min-port", "40000", "--max-port", "49999"])
            .args(["--use-auth-secret", &format!("--static-auth-secret={SECRET}"), "--realm=peerbubble"])
            .args(["--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli", "--log-file", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("turnserver (Debian package coturn)")?,
    );
    wait_stun(coturn_port)?;
    let _peer = Guard(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));

    println!("\nmemory: {} allocations left alive", s.allocations);
    let ours_mem = memory_per_allocation(ours.0.id(), ours_port, peer_port, &member, s.allocations)?;
    let coturn_mem = memory_per_allocation(coturn.0.id(), coturn_port, peer_port, &member, s.allocations)?;
    println!(
        "\nrelay: {} clients x {} messages of {} bytes, echoed (channels, UDP, -z 0), {} rounds alternating",
        s.clients, s.messages, s.length, s.rounds
    );
    let load = Load { clients: s.clients, messages: s.messages, length: s.length };
    let (mut ours_runs, mut coturn_runs) = (Vec::new(), Vec::new());
    for round in 0..s.rounds {
        let o = measure(ours.0.id(), ours_port, peer_port, &member, load, 0)?;
        let c = measure(coturn.0.id(), coturn_port, peer_port, &member, load, 0)?;
        println!(
            "round {round}: ours {:.0} msg/s of CPU (lost {}, {:.1} s), coturn {:.0} msg/s of CPU (lost {}, {:.1} s)",
            o.rate, o.lost, o.wall, c.rate, c.lost, c.wall
        );
        ours_runs.push(o);
        coturn_runs.push(c);
    }
    let mean = |runs: &[Measured]| runs.iter().map(|r| r.rate).sum::<f64>() / runs.len() as f64;
    let (ours_rate, coturn_rate) = (mean(&ours_runs), mean(&coturn_runs));
    let loss_ours: u64 = ours_runs.iter().map(|r| r.lost).sum();
    let loss_coturn: u64 = coturn_runs.iter().map(|r| r.lost).sum();

    // Paced: what a call does (a message per millisecond per client, well below what either relays), where
    // nothing should be lost.
    let paced = Load { messages: s.paced, ..load };
    println!(
        "\npaced: {} clients x {} messages of {} bytes, one per millisecond per client",
        s.clients, s.paced, s.length
    );
    let o = measure(ours.0.id(), ours_port, peer_port, &member, paced, 1)?;
    let c = measure(coturn.0.id(), coturn_port, peer_port, &member, paced, 1)?;
    println!(
        "ours lost {} ({:.0} msg/s of CPU, {:.1} s), coturn lost {} ({:.0} msg/s of CPU, {:.1} s)",
        o.lost, o.rate, o.wall, c.lost, c.rate, c.wall
    );
    let (paced_ours, paced_coturn) = (o.lost, c.lost);

    drop((ours, coturn));
    let _ = std::fs::remove_dir_all(&work);

    println!("\n| | PeerBubble | coturn |\n|---|---|---|");
    println!("| echoed messages per CPU-second | {ours_rate:.0} | {coturn_rate:.0} |");
    println!(
        "| messages lost at full speed ({} x {}) | {loss_ours} | {loss_coturn} |",
        s.rounds,
        s.clients * s.messages
    );
    println!("| messages lost paced ({}) | {paced_ours} | {paced_coturn} |", s.clients * s.paced);
    println!("| RSS per allocation (bytes) | {ours_mem:.0} | {coturn_mem:.0} |\n");
    println!(
        "bench turn: ours={ours_rate:.0} coturn={coturn_rate:.0} ratio={:.2} loss_ours={loss_ours} loss_coturn={loss_coturn} paced_loss_ours={paced_ours} paced_loss_coturn={paced_coturn}",
        ours_rate / coturn_rate
    );
    Ok(())
}
