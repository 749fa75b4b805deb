//! Load generator for `cargo xtask bench signaling`: the same workload against PeerBubble's signaling and
//! against the PeerJS server, so that the two can be compared in one run.
//!
//! relay: N pairs; in each pair A keeps `window` envelopes of `body` bytes in flight to B, and B echoes every
//!        envelope back. Reports envelopes relayed per second (both directions) and round-trip percentiles.
//! idle:  opens N connections (authenticated, for PeerBubble), prints `ready N`, holds them until stdin closes.
//!        With `--url-b`, every pair's B connects there (another replica of the bubble): the pairs cross replicas.
//! drain: member 0 sends `count` envelopes to member 1, who is away (the bubble keeps them in its mailbox);
//!        then member 1 connects, and the time until the last arrives is measured (envelopes/s).
//! bubble: writes the bubble file that gives pair k (members 2k, 2k+1) its own category.
//! soak:  rounds of `count` sessions (two per member) opened, then ended by every way a session ends (client
//!        close, dropped connection, oversized text and binary frames, invalid UTF-8, flooding, idle timeout,
//!        removal from the bubble file), for `seconds`; after each round the server must report no session and
//!        no connection. Prints the server's RSS along the way (`--server-pid`).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use peerbubble_peer::SignalClient;
use peerbubble_proto::IdentityKey;
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
    url_b: Option<String>,
    pairs: u32,
    window: u32,
    seconds: u64,
    body: usize,
    count: u32,
    out: String,
    server_pid: u32,
}

fn parse() -> Result<Args, String> {
    let mut argv = std::env::args().skip(1);
    let mut args = Args {
        mode: argv.next().ok_or("usage: peerbubble-loadgen relay|idle|bubble [--flags]")?,
        target: "ours".into(),
        url: String::new(),
        url_b: None,
        pairs: 50,
        window: 16,
        seconds: 10,
        body: 1024,
        count: 10_000,
        out: "bubble.yaml".into(),
        server_pid: 0,
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--target" => args.target = value,
            "--url" => args.url = value,
            "--url-b" => args.url_b = Some(value),
            "--pairs" => args.pairs = num(&value)? as u32,
            "--window" => args.window = num(&value)? as u32,
            "--seconds" => args.seconds = num(&value)?,
            "--body" => args.body = num(&value)? as usize,
            "--count" => args.count = num(&value)? as u32,
            "--out" => args.out = value,
            "--server-pid" => args.server_pid = num(&value)? as u32,
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
        "drain" => drain(&args).await,
        "idle" => idle(&args).await,
        "soak" => soak::run(&args).await,
        other => Err(format!("unknown mode {other}")),
    };
    if let Err(err) = result {
        eprintln!("loadgen: {err}");
        std::process::exit(1);
    }
}

fn write_bubble(args: &Args) -> Result<(), String> {
    std::fs::write(&args.out, bubble_yaml(args.pairs, |_| true)).map_err(|e| e.to_string())
}

/// Pair k (members 2k, 2k+1) in its own category; members for which `keep` is false are left out.
fn bubble_yaml(pairs: u32, keep: impl Fn(u32) -> bool) -> String {
    let mut yaml = String::from("bubble: bench\ncategories:\n");
    for p in 0..pairs {
        yaml += &format!("  - {{id: pair-{p}}}\n");
    }
    yaml += "members:\n";
    for i in (0..pairs * 2).filter(|i| keep(*i)) {
        yaml +=
            &format!("  - {{public_key: {}, display_name: m{i}, categories: [pair-{}]}}\n", key(i).public_key(), i / 2);
    }
    yaml
}

/// One side of a pair, for either server. The hot path handles frames as text (a body is echoed in its wire
/// form, only the 9-byte stamp is decoded) so that the generator spends as little CPU as possible, identically
/// for both servers.
enum Side {
    Ours(Box<SignalClient>, String, u64),
    PeerJs(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>>, String),
}

impl Side {
    async fn connect(args: &Args, me: u32, peer: u32) -> Result<Self, String> {
        if args.target == "ours" {
            let client = SignalClient::connect(&args.url, &key(me)).await.map_err(|e| e.to_string())?;
            Ok(Side::Ours(Box::new(client), key(peer).public_key().member_id().to_string(), 0))
        } else {
            let url = format!("{}?key=peerjs&id=m{me}&token=t{me}", args.url);
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(&url, None, true).await.map_err(|e| e.to_string())?;
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

    /// Sends bodies given in unpadded base64url, with one flush.
    async fn send(&mut self, bodies: Vec<String>) -> Result<(), String> {
        match self {
            Side::Ours(client, to, id) => {
                let texts = bodies
                    .into_iter()
                    .map(|body| {
                        *id += 1;
                        format!(r#"{{"type":"send","id":{id},"to":"{to}","body":"{body}"}}"#)
                    })
                    .collect();
                client.send_texts(texts).await.map_err(|e| e.to_string())
            }
            Side::PeerJs(ws, to) => {
                for body in bodies {
                    let text = format!(r#"{{"type":"OFFER","dst":"{to}","payload":{{"b":"{body}"}}}}"#);
                    ws.feed(Message::text(text)).await.map_err(|e| e.to_string())?;
                }
                ws.flush().await.map_err(|e| e.to_string())
            }
        }
    }

    /// The envelope bodies addressed to us (base64url): waits for one, then takes all that already arrived.
    async fn recv(&mut self) -> Result<Vec<String>, String> {
        use futures_util::FutureExt as _;
        let mut texts = Vec::new();
        match self {
            Side::Ours(client, _, _) => {
                texts.push(client.next_raw().await.map_err(|e| e.to_string())?);
                texts.extend(client.ready_raw().map_err(|e| e.to_string())?);
            }
            Side::PeerJs(ws, _) => {
                let mut next = Some(ws.next().await);
                while let Some(message) = next {
                    match message {
                        Some(Ok(Message::Text(t))) => texts.push(t),
                        Some(Ok(_)) => {}
                        other => return Err(format!("peerjs: {other:?}")),
                    }
                    next = ws.next().now_or_never();
                }
            }
        }
        let marker = if matches!(self, Side::Ours(..)) { "\"body\":\"" } else { "\"b\":\"" };
        let mut bodies = Vec::with_capacity(texts.len());
        for text in texts {
            let text = text.as_str();
            if text.starts_with(r#"{"type":"ack""#) {
                continue;
            }
            if text.starts_with(r#"{"type":"error""#) {
                return Err(format!("server error: {text}"));
            }
            if let Some(start) = text.find(marker) {
                let rest = &text[start + marker.len()..];
                let end = rest.find('"').ok_or("bad body")?;
                bodies.push(rest[..end].to_owned());
            }
        }
        Ok(bodies)
    }
}

fn base64_url(bytes: &[u8]) -> String {
    peerbubble_proto::Opaque::from_bytes(bytes).map(String::from).unwrap_or_default()
}

/// The first 9 bytes (12 base64url characters) of a body: a marker byte and the send time.
fn stamp_of(body: &str) -> Result<(u8, u64), String> {
    let head = peerbubble_proto::Opaque::try_from(body.get(..12).ok_or("short body")?.to_owned())
        .map_err(|e| e.to_string())?
        .to_bytes();
    let sent = u64::from_be_bytes(head.get(1..9).and_then(|s| s.try_into().ok()).ok_or("short stamp")?);
    Ok((head[0], sent))
}

async fn relay(args: &Args) -> Result<(), String> {
    // Connect everything first: a failed connection ends the run with an error instead of leaving the others
    // waiting for a start that never comes.
    let mut connecting = Vec::new();
    for p in 0..args.pairs {
        let (a, b) = (2 * p, 2 * p + 1);
        let (args_a, args_b) = (args.clone(), args.clone());
        connecting.push(tokio::spawn(async move { Side::connect(&args_a, a, b).await }));
        connecting.push(tokio::spawn(async move {
            // B on the other replica, when given.
            let args_b = Args { url: args_b.url_b.clone().unwrap_or(args_b.url.clone()), ..args_b };
            Side::connect(&args_b, b, a).await
        }));
    }
    let mut sides = Vec::with_capacity(connecting.len());
    for task in connecting {
        sides.push(task.await.map_err(|e| e.to_string())??);
    }
    let mut sides = sides.into_iter();
    let start_gate = Arc::new(tokio::sync::Barrier::new(args.pairs as usize * 2 + 1));
    let epoch = Instant::now();
    let mut initiators = Vec::new();
    let mut echoers = Vec::new();
    for _ in 0..args.pairs {
        let (Some(mut side_a), Some(mut side_b)) = (sides.next(), sides.next()) else { break };
        let (args_a, gate_a, gate_b) = (args.clone(), start_gate.clone(), start_gate.clone());
        echoers.push(tokio::spawn(async move {
            let side = &mut side_b;
            gate_b.wait().await;
            loop {
                let bodies = side.recv().await?;
                // 0xFF encodes as "_w..": the initiator is done.
                let stop = bodies.iter().any(|b| b.starts_with("_w"));
                side.send(bodies.into_iter().filter(|b| !b.starts_with("_w")).collect()).await?;
                if stop {
                    return Ok::<(), String>(());
                }
            }
        }));
        initiators.push(tokio::spawn(async move {
            let side = &mut side_a;
            gate_a.wait().await;
            let deadline = Instant::now() + Duration::from_secs(args_a.seconds);
            // A 9-byte head (marker, send time) is exactly 12 base64 characters, so the constant tail is encoded once.
            let tail = base64_url(&vec![0x5Au8; args_a.body.saturating_sub(9).max(3)]);
            let mut rtts = Vec::new();
            let stamped = |marker: u8| {
                let mut head = [marker; 9];
                head[1..9].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                base64_url(&head) + &tail
            };
            side.send((0..args_a.window).map(|_| stamped(0)).collect()).await?;
            let mut in_flight = args_a.window as usize;
            while in_flight > 0 {
                let echoes = side.recv().await?;
                in_flight -= echoes.len();
                let now = epoch.elapsed().as_nanos() as u64;
                for echo in &echoes {
                    rtts.push(now - stamp_of(echo)?.1);
                }
                if Instant::now() < deadline {
                    in_flight += echoes.len();
                    side.send(echoes.iter().map(|_| stamped(0)).collect()).await?;
                }
            }
            side.send(vec![stamped(0xFF)]).await?;
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

async fn drain(args: &Args) -> Result<(), String> {
    use peerbubble_proto::ServerFrame;
    let (sender, away) = (key(0), key(1));
    let to = away.public_key().member_id();
    let mut a = SignalClient::connect(&args.url, &sender).await.map_err(|e| e.to_string())?;
    let body = vec![0x5Au8; args.body];
    let (mut sent, mut stored, window) = (0u32, 0u32, args.window.max(1));
    while stored < args.count {
        while sent < args.count && sent - stored < window {
            a.send(to, &body).await.map_err(|e| e.to_string())?;
            sent += 1;
        }
        match a.next_timeout(Duration::from_secs(10)).await.map_err(|e| e.to_string())? {
            ServerFrame::Ack { stored: 1, .. } => stored += 1,
            ServerFrame::Ack { .. } => return Err("member 1 was online: nothing was kept".into()),
            ServerFrame::Error { code, message, .. } => return Err(format!("{code:?}: {message}")),
            _ => {}
        }
    }
    let started = Instant::now();
    let mut b = SignalClient::connect(&args.url, &away).await.map_err(|e| e.to_string())?;
    let mut got = 0u32;
    while got < args.count {
        if let ServerFrame::Deliver { seq: Some(_), .. } =
            b.next_timeout(Duration::from_secs(10)).await.map_err(|e| e.to_string())?
        {
            got += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("{{\"drained\":{got},\"seconds\":{elapsed:.3},\"per_s\":{:.0}}}", f64::from(got) / elapsed);
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

mod soak {
    //! Sessions opened and ended by every path, in rounds; the server must end each round with nothing
    //! registered (issue 13's leak would show as sessions that never go away and logins refused).

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures_util::{SinkExt as _, StreamExt as _};
    use peerbubble_proto::{ClientFrame, Purpose, ServerFrame, auth_message, decode_server_frame, encode_frame};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::{Args, bubble_yaml, key};

    type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    /// How a session ends; a member's two sessions end the same way.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum End {
        ClientClose,
        Dropped,
        TextTooLarge,
        BinaryTooLarge,
        InvalidUtf8,
        Flood,
        Idle,
        Removed,
    }

    const ENDS: [End; 8] = [
        End::ClientClose,
        End::Dropped,
        End::TextTooLarge,
        End::BinaryTooLarge,
        End::InvalidUtf8,
        End::Flood,
        End::Idle,
        End::Removed,
    ];

    fn end_of(session: u32) -> End {
        ENDS[(session / 2) as usize % ENDS.len()]
    }

    async fn login(url: &str, member: u32) -> Result<Ws, String> {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| e.to_string())?;
        let (bubble, nonce) = match next(&mut ws).await {
            Some(ServerFrame::Challenge { bubble, nonce, .. }) => (bubble, nonce),
            other => return Err(format!("challenge: {other:?}")),
        };
        let public_key = key(member).public_key();
        let signature = key(member).sign(Purpose::SignalAuth, &auth_message(&bubble, &nonce, &public_key));
        let auth = encode_frame(&ClientFrame::Auth { public_key, nonce, signature });
        ws.send(Message::text(auth)).await.map_err(|e| e.to_string())?;
        match next(&mut ws).await {
            Some(ServerFrame::Welcome { .. }) => Ok(ws),
            other => Err(format!("member {member} not welcome: {other:?}")),
        }
    }

    async fn next(ws: &mut Ws) -> Option<ServerFrame> {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.ok()?? {
                Ok(Message::Text(text)) => return decode_server_frame(text.as_bytes()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Waits for the server's close frame; its code.
    async fn closed(ws: &mut Ws) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.ok()?? {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Ends the session as `how` says; when the server is the one to close, its close code must be the one
    /// that way of ending deserves.
    async fn end(mut ws: Ws, how: End) -> Result<(), String> {
        let expect = match how {
            End::ClientClose => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            End::Dropped => return Ok(()),
            End::TextTooLarge => {
                let _ = ws.send(Message::text("x".repeat(5000))).await;
                1009
            }
            End::BinaryTooLarge => {
                let _ = ws.send(Message::binary(vec![0u8; 5000])).await;
                1009
            }
            End::InvalidUtf8 => {
                let _ = ws.send(Message::Frame(Frame::message(vec![0xff, 0xfe], OpCode::Data(Data::Text), true))).await;
                1007
            }
            End::Flood => {
                for _ in 0..400 {
                    if ws.send(Message::text(r#"{"type":"ping","id":1}"#)).await.is_err() {
                        break;
                    }
                }
                1008
            }
            End::Idle => 4000,
            End::Removed => 4001,
        };
        match closed(&mut ws).await {
            Some(code) if code == expect => Ok(()),
            other => Err(format!("{how:?}: closed with {other:?}, expected {expect}")),
        }
    }

    /// (sessions, connections) from the server's /metrics.
    async fn gauges(addr: &str) -> Result<(i64, i64), String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.map_err(|e| e.to_string())?;
        let gauge = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or(format!("{name} missing"))
        };
        Ok((gauge("peerbubble_signal_sessions")?, gauge("peerbubble_signal_connections")?))
    }

    fn rss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    pub(super) async fn run(args: &Args) -> Result<(), String> {
        let count = args.count - args.count % 2;
        let pairs = count.div_ceil(4);
        let addr = args.url.trim_start_matches("ws://").split('/').next().unwrap_or_default().to_owned();
        let bubble_file = args.out.clone();
        let write = |keep: &dyn Fn(u32) -> bool| {
            std::fs::write(&bubble_file, bubble_yaml(pairs, keep)).map_err(|e| e.to_string())
        };
        let start_rss = rss_kib(args.server_pid);
        let started = Instant::now();
        let (mut rounds, mut ended, mut peak_rss, mut first_round_rss) = (0u32, 0u64, 0u64, 0u64);
        while rounds == 0 || started.elapsed() < Duration::from_secs(args.seconds) {
            write(&|_| true)?;
            // The server polls the file; give it time to take the full directory back.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let permits = Arc::new(tokio::sync::Semaphore::new(256));
            let mut logins = Vec::new();
            for session in 0..count {
                let (url, permits) = (args.url.clone(), permits.clone());
                logins.push(tokio::spawn(async move {
                    let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
                    login(&url, session / 2).await
                }));
            }
            let mut sessions = Vec::with_capacity(logins.len());
            for task in logins {
                sessions.push(task.await.map_err(|e| e.to_string())??);
            }
            let (registered, _) = gauges(&addr).await?;
            if registered != i64::from(count) {
                return Err(format!("round {rounds}: {registered} sessions registered with {count} open"));
            }
            peak_rss = peak_rss.max(rss_kib(args.server_pid));
            // Removal: the members whose sessions end that way leave the bubble file.
            write(&|member| end_of(member * 2) != End::Removed)?;
            let mut ends = Vec::new();
            for (session, ws) in (0..count).zip(sessions) {
                ends.push(tokio::spawn(end(ws, end_of(session))));
            }
            for task in ends {
                task.await.map_err(|e| e.to_string())??;
            }
            ended += u64::from(count);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let now = gauges(&addr).await?;
                if now == (0, 0) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "round {rounds}: after every session ended: (sessions, connections) = {now:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rounds += 1;
            let rss = rss_kib(args.server_pid);
            if rounds == 1 {
                first_round_rss = rss;
            }
            println!("round {rounds}: {count} sessions opened and ended, server RSS {rss} KiB");
        }
        write(&|_| true)?;
        let end_rss = rss_kib(args.server_pid);
        println!(
            "soak: rounds={rounds} sessions_ended={ended} registered_after=0 connections_after=0 \
             rss_start_kib={start_rss} rss_peak_kib={peak_rss} rss_after_round1_kib={first_round_rss} \
             rss_end_kib={end_rss} seconds={:.0}",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
