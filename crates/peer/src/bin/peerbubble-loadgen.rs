//! Load generator for `cargo xtask bench signaling`: the same workload against PeerBubble's signaling and
//! against the PeerJS server, so that the two can be compared in one run.
//!
//! relay: N pairs; in each pair A keeps `window` envelopes of `body` bytes in flight to B, and B echoes every
//!        envelope back. Reports envelopes relayed per second (both directions) and round-trip percentiles.
//! idle:  opens N connections (authenticated, for PeerBubble), prints `ready N`, holds them until stdin closes.
//! bubble: writes the bubble file that gives pair k (members 2k, 2k+1) its own category.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use peerbubble_peer::SignalClient;
use peerbubble_proto::{IdentityKey, MemberId, ServerFrame};
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite::Message;

fn key(i: u32) -> IdentityKey {
    let mut seed = [0x42u8; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    IdentityKey::from_seed(&seed)
}

#[derive(Debug, Clone)]
struct Args {
    mode: String,
    target: String,
    url: String,
    pairs: u32,
    window: u32,
    seconds: u64,
    body: usize,
    count: u32,
    out: String,
}

fn parse() -> Result<Args, String> {
    let mut argv = std::env::args().skip(1);
    let mut args = Args {
        mode: argv.next().ok_or("usage: peerbubble-loadgen relay|idle|bubble [--flags]")?,
        target: "ours".into(),
        url: String::new(),
        pairs: 50,
        window: 16,
        seconds: 10,
        body: 1024,
        count: 10_000,
        out: "bubble.yaml".into(),
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--target" => args.target = value,
            "--url" => args.url = value,
            "--pairs" => args.pairs = num(&value)? as u32,
            "--window" => args.window = num(&value)? as u32,
            "--seconds" => args.seconds = num(&value)?,
            "--body" => args.body = num(&value)? as usize,
            "--count" => args.count = num(&value)? as u32,
            "--out" => args.out = value,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(2);
        }
    };
    let result = match args.mode.as_str() {
        "bubble" => write_bubble(&args),
        "relay" => relay(&args).await,
        "idle" => idle(&args).await,
        other => Err(format!("unknown mode {other}")),
    };
    if let Err(err) = result {
        eprintln!("loadgen: {err}");
        std::process::exit(1);
    }
}

fn write_bubble(args: &Args) -> Result<(), String> {
    let mut yaml = String::from("bubble: bench\ncategories:\n");
    for p in 0..args.pairs {
        yaml += &format!("  - {{id: pair-{p}}}\n");
    }
    yaml += "members:\n";
    for i in 0..args.pairs * 2 {
        yaml +=
            &format!("  - {{public_key: {}, display_name: m{i}, categories: [pair-{}]}}\n", key(i).public_key(), i / 2);
    }
    std::fs::write(&args.out, yaml).map_err(|e| e.to_string())
}

/// One side of a pair, for either server.
enum Side {
    Ours(Box<SignalClient>, MemberId),
    PeerJs(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>>, String),
}

impl Side {
    async fn connect(args: &Args, me: u32, peer: u32) -> Result<Self, String> {
        if args.target == "ours" {
            let client = SignalClient::connect(&args.url, &key(me)).await.map_err(|e| e.to_string())?;
            Ok(Side::Ours(Box::new(client), key(peer).public_key().member_id()))
        } else {
            let url = format!("{}?key=peerjs&id=m{me}&token=t{me}", args.url);
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.map_err(|e| e.to_string())?;
            // The server says OPEN once the id is registered.
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("\"OPEN\"") => break,
                    Some(Ok(_)) => {}
                    other => return Err(format!("peerjs handshake: {other:?}")),
                }
            }
            Ok(Side::PeerJs(Box::new(ws), format!("m{peer}")))
        }
    }

    async fn send(&mut self, body: &[u8]) -> Result<(), String> {
        match self {
            Side::Ours(client, to) => client.send(*to, body).await.map(drop).map_err(|e| e.to_string()),
            Side::PeerJs(ws, to) => {
                let payload = base64_url(body);
                let text = format!(r#"{{"type":"OFFER","dst":"{to}","payload":{{"b":"{payload}"}}}}"#);
                ws.send(Message::text(text)).await.map_err(|e| e.to_string())
            }
        }
    }

    /// The next envelope body addressed to us.
    async fn recv(&mut self) -> Result<Vec<u8>, String> {
        loop {
            match self {
                Side::Ours(client, _) => match client.next().await.map_err(|e| e.to_string())? {
                    ServerFrame::Deliver { body, .. } => return Ok(body.to_bytes()),
                    ServerFrame::Error { code, .. } => return Err(format!("server error {}", code.as_str())),
                    _ => {}
                },
                Side::PeerJs(ws, _) => match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if let Some(start) = t.find("\"b\":\"") {
                            let rest = &t[start + 5..];
                            let end = rest.find('"').ok_or("bad payload")?;
                            return unbase64_url(&rest[..end]);
                        }
                    }
                    Some(Ok(_)) => {}
                    other => return Err(format!("peerjs: {other:?}")),
                },
            }
        }
    }
}

fn base64_url(bytes: &[u8]) -> String {
    peerbubble_proto::Opaque::from_bytes(bytes).map(String::from).unwrap_or_default()
}

fn unbase64_url(text: &str) -> Result<Vec<u8>, String> {
    peerbubble_proto::Opaque::try_from(text.to_owned()).map(|o| o.to_bytes()).map_err(|e| e.to_string())
}

async fn relay(args: &Args) -> Result<(), String> {
    let start_gate = Arc::new(tokio::sync::Barrier::new(args.pairs as usize * 2 + 1));
    let epoch = Instant::now();
    let mut initiators = Vec::new();
    let mut echoers = Vec::new();
    for p in 0..args.pairs {
        let (a, b) = (2 * p, 2 * p + 1);
        let (args_a, args_b, gate_a, gate_b) = (args.clone(), args.clone(), start_gate.clone(), start_gate.clone());
        echoers.push(tokio::spawn(async move {
            let mut side = Side::connect(&args_b, b, a).await?;
            gate_b.wait().await;
            loop {
                let body = side.recv().await?;
                if body.first() == Some(&0xFF) {
                    return Ok::<(), String>(());
                }
                side.send(&body).await?;
            }
        }));
        initiators.push(tokio::spawn(async move {
            let mut side = Side::connect(&args_a, a, b).await?;
            gate_a.wait().await;
            let deadline = Instant::now() + Duration::from_secs(args_a.seconds);
            let mut body = vec![0x5Au8; args_a.body];
            let mut rtts = Vec::new();
            let stamp = |body: &mut Vec<u8>| {
                body[0] = 0;
                body[1..9].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
            };
            for _ in 0..args_a.window {
                stamp(&mut body);
                side.send(&body).await?;
            }
            let mut in_flight = args_a.window;
            while in_flight > 0 {
                let echo = side.recv().await?;
                in_flight -= 1;
                let sent = u64::from_be_bytes(echo.get(1..9).and_then(|s| s.try_into().ok()).ok_or("short echo")?);
                rtts.push(epoch.elapsed().as_nanos() as u64 - sent);
                if Instant::now() < deadline {
                    stamp(&mut body);
                    side.send(&body).await?;
                    in_flight += 1;
                }
            }
            body[0] = 0xFF;
            side.send(&body).await?;
            Ok::<Vec<u64>, String>(rtts)
        }));
    }
    start_gate.wait().await;
    let measured = Instant::now();
    let mut rtts = Vec::new();
    for task in initiators {
        rtts.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = measured.elapsed().as_secs_f64();
    for task in echoers {
        task.await.map_err(|e| e.to_string())??;
    }
    rtts.sort_unstable();
    let pct = |q: f64| rtts.get(((rtts.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |ns| *ns as f64 / 1e6);
    let envelopes = rtts.len() as f64 * 2.0;
    println!(
        "{{\"target\":\"{}\",\"envelopes\":{},\"seconds\":{elapsed:.3},\"envelopes_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        args.target,
        envelopes,
        envelopes / elapsed,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

async fn idle(args: &Args) -> Result<(), String> {
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in 0..args.count {
        let (args, permits) = (args.clone(), permits.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
            Side::connect(&args, i, i ^ 1).await
        }));
    }
    let mut sides = Vec::with_capacity(tasks.len());
    for task in tasks {
        sides.push(task.await.map_err(|e| e.to_string())??);
    }
    println!("ready {}", sides.len());
    // Hold every connection until the caller closes our stdin.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(sides);
    Ok(())
}
