//! The embedded TURN relay against a client nobody here wrote: coturn's `turnutils_uclient` (Debian package
//! coturn, installed by `cargo xtask test`) relaying to coturn's `turnutils_peer`, over UDP, TCP and TLS, with
//! TURN REST credentials; and the credentials a member gets in `welcome`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use peerbubble_bubble_server::turn::{TlsSource, TurnConfig};
use peerbubble_proto::ServerFrame;
use peerbubble_turn::credentials::TurnSecret;
use support::{Bubble, WAIT, expect, id, member};
use tokio::process::{Child, Command};

const SECRET: &str = "correct-horse-battery-staple-0123456789";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn turn_config(allow_loopback: bool) -> TurnConfig {
    TurnConfig {
        secret: TurnSecret::new(SECRET.as_bytes().to_vec()).unwrap(),
        secret_file: None,
        listen: vec![SocketAddr::new(LOCALHOST, 0)],
        tls_port: Some(0),
        tls: TlsSource::SelfSigned(vec!["localhost".into()]),
        relay_ips: vec![LOCALHOST],
        external_ips: vec![],
        ports: (40_000, 59_999),
        public_host: None,
        credential_ttl: Duration::from_secs(600),
        cluster: vec![],
        // Loopback peers are refused unless an operator allows them, as coturn needs --allow-loopback-peers.
        allowed: if allow_loopback { vec!["127.0.0.0/8".parse().unwrap()] } else { vec![] },
        // Each uclient run leaves its UDP allocations to expire, as a crashed client would.
        core: peerbubble_turn::Config { max_allocations_per_member: 100, ..Default::default() },
        max_connections: 100,
    }
}

fn yaml(members: &[(u16, &str)]) -> String {
    let mut yaml = String::from("bubble: turn-bubble\ncategories:\n  - {id: team}\nmembers:\n");
    for (seed, name) in members {
        yaml += &member(*seed, name, &["team"]);
    }
    yaml
}

async fn start(allow_loopback: bool, tweak: impl FnOnce(&mut TurnConfig)) -> Bubble {
    let mut turn = turn_config(allow_loopback);
    tweak(&mut turn);
    Bubble::start(&yaml(&[(1, "Ann"), (2, "Ben")]), |c| c.turn = Some(turn)).await
}

fn relay(b: &Bubble) -> (SocketAddr, SocketAddr) {
    let turn = b.server.as_ref().unwrap().turn().unwrap();
    (turn.udp_addrs()[0], turn.tls_addrs()[0])
}

/// coturn's echo peer on a free loopback port.
fn echo_peer() -> (Child, u16) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("turnutils_peer (Debian package coturn; `cargo xtask test` installs it)");
    (child, port)
}

#[derive(Debug)]
struct Run {
    sent: u64,
    received: u64,
    lost: Option<u64>,
    output: String,
}

/// Runs turnutils_uclient with `args` against `server` and reads its totals.
async fn uclient(args: &[&str], server: SocketAddr, peer_port: u16) -> Run {
    let port = server.port().to_string();
    let peer_port = peer_port.to_string();
    // Paced at 2 ms per client (500 messages/s each): this checks relaying, not how much a loaded 2-core CI
    // machine can take at full blast (that is `cargo xtask bench turn`).
    let mut all = vec!["-e", "127.0.0.1", "-r", &peer_port, "-p", &port, "-z", "2"];
    all.extend_from_slice(args);
    all.push("127.0.0.1");
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new("turnutils_uclient").args(&all).kill_on_drop(true).output(),
    )
    .await
    .expect("turnutils_uclient finished")
    .expect("turnutils_uclient (Debian package coturn; `cargo xtask test` installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let number_after = |needle: &str| {
        text.lines().rev().find_map(|line| {
            let rest = &line[line.find(needle)? + needle.len()..];
            rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok()
        })
    };
    Run {
        sent: number_after("tot_send_msgs=").unwrap_or(0),
        received: number_after("tot_recv_msgs=").unwrap_or(0),
        lost: number_after("Total lost packets"),
        output: text,
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_client_relays_without_loss_over_udp_tcp_and_tls_with_rest_credentials() {
    let mut b = start(true, |_| {}).await;
    let (udp, tls) = relay(&b);
    let (_peer, peer_port) = echo_peer();
    let user = id(1).to_string();
    let rest = ["-W", SECRET, "-u", &user, "-c", "-m", "3", "-n", "300", "-l", "200"];
    for (label, extra, server) in [
        ("udp channels", &[][..], udp),
        ("udp send indications", &["-s"][..], udp),
        ("tcp", &["-t"][..], udp),
        ("tls", &["-t", "-S"][..], tls),
    ] {
        let args: Vec<&str> = rest.iter().chain(extra).copied().collect();
        let run = uclient(&args, server, peer_port).await;
        assert_eq!((run.sent, run.received, run.lost), (900, 900, Some(0)), "{label}: {}", run.output);
    }
    let metrics = b.metrics();
    assert!(metric(&metrics, "peerbubble_turn_allocations_created_total") >= 12, "{metrics}");
    assert!(metric(&metrics, "peerbubble_turn_packets_total") >= 2 * 3600, "{metrics}");
    assert!(metric(&metrics, "peerbubble_turn_bytes_total") >= 2 * 3600 * 200, "{metrics}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_peers_wrong_secrets_and_strangers_are_refused() {
    let mut b = start(false, |_| {}).await;
    let (udp, _) = relay(&b);
    let (_peer, peer_port) = echo_peer();
    let user = id(1).to_string();

    // The default policy: 127.0.0.1 is no peer for a relay (403 to CreatePermission/ChannelBind).
    let run = uclient(&["-W", SECRET, "-u", &user, "-c", "-m", "1", "-n", "20"], udp, peer_port).await;
    assert_eq!(run.received, 0, "{}", run.output);
    let metrics = b.metrics();
    assert!(metrics.contains(r#"peerbubble_turn_refused_peers_total{reason="loopback"}"#), "{metrics}");
    let allocated = metric(&metrics, "peerbubble_turn_allocations_created_total");

    // A secret that is not the bubble's, and a user who is not a member.
    let run =
        uclient(&["-W", "not-the-secret-not-the-secret-0000", "-u", &user, "-c", "-n", "5"], udp, peer_port).await;
    assert_eq!(run.received, 0, "{}", run.output);
    let stranger = id(99).to_string();
    let run = uclient(&["-W", SECRET, "-u", &stranger, "-c", "-n", "5"], udp, peer_port).await;
    assert_eq!(run.received, 0, "{}", run.output);
    let metrics = b.metrics();
    assert!(metrics.contains(r#"peerbubble_turn_auth_failures_total{reason="bad_integrity"}"#), "{metrics}");
    assert!(metrics.contains(r#"peerbubble_turn_auth_failures_total{reason="revoked"}"#), "{metrics}");
    assert_eq!(
        metric(&metrics, "peerbubble_turn_allocations_created_total"),
        allocated,
        "no allocation without credentials"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_credentials_work_refresh_before_expiry_and_die_with_membership() {
    let mut b = start(true, |t| t.credential_ttl = Duration::from_secs(3)).await;
    let (udp, _) = relay(&b);
    let (_peer, peer_port) = echo_peer();
    let mut ann = b.connect(1).await;
    let servers = ann.ice_servers().to_vec();
    let host = format!("127.0.0.1:{}", udp.port());
    assert_eq!(servers[0].urls, vec![format!("stun:{host}")]);
    let turn = &servers[1];
    assert!(turn.urls.contains(&format!("turn:{host}?transport=udp")), "{turn:?}");
    assert!(turn.urls.iter().any(|u| u.starts_with("turns:127.0.0.1:")), "{turn:?}");
    let (username, credential) = (turn.username.clone().unwrap(), turn.credential.clone().unwrap());
    assert!(username.ends_with(&format!(":{}", id(1))), "{username}");

    // The credentials as handed out work with an independent client (long-term credential mechanism).
    let run = uclient(&["-u", &username, "-w", &credential, "-c", "-n", "50"], udp, peer_port).await;
    assert_eq!((run.received, run.lost), (50, Some(0)), "{}", run.output);

    // Fresh ones arrive before the old expire (at two thirds of 3 s).
    let (fresh, expires) = expect(&mut ann, "ice_servers", |f| match f {
        ServerFrame::IceServers { ice_servers, expires_in_ms } => Some((ice_servers.clone(), *expires_in_ms)),
        _ => None,
    })
    .await;
    assert_eq!(expires, 3000);
    assert_ne!(fresh[1].username.as_ref(), Some(&username), "a new expiry");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let run = uclient(&["-u", &username, "-w", &credential, "-c", "-n", "5"], udp, peer_port).await;
    assert_eq!(run.received, 0, "expired credentials make no new allocation: {}", run.output);
    assert_eq!(ann.ice_servers()[1].username, fresh[1].username, "the client keeps the fresh ones");

    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_loses_its_relay_at_once() {
    let mut b = start(true, |_| {}).await;
    let (udp, _) = relay(&b);
    let (_peer, peer_port) = echo_peer();
    let mut ann = b.connect(1).await;
    let turn = ann.ice_servers()[1].clone();
    let (username, credential) = (turn.username.unwrap(), turn.credential.unwrap());
    let run = uclient(&["-u", &username, "-w", &credential, "-c", "-n", "20"], udp, peer_port).await;
    assert_eq!(run.received, 20, "{}", run.output);

    b.write(&yaml(&[(2, "Ben")]));
    let _ = tokio::time::timeout(WAIT, async { while ann.next().await.is_ok() {} }).await;
    let run = uclient(&["-u", &username, "-w", &credential, "-c", "-n", "5"], udp, peer_port).await;
    assert_eq!(run.received, 0, "unexpired credentials of a removed member: {}", run.output);
    let metrics = b.metrics();
    assert!(metrics.contains(r#"peerbubble_turn_auth_failures_total{reason="revoked"}"#), "{metrics}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_file_issues_new_credentials_and_keeps_old_ones_for_the_overlap() {
    const NEXT: &str = "the-next-missions-secret-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turn-secret");
    std::fs::write(&file, SECRET).unwrap();
    let watched = file.clone();
    let mut b = start(true, move |t| t.secret_file = Some(watched)).await;
    let (udp, _) = relay(&b);
    let (_peer, peer_port) = echo_peer();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    std::fs::write(&file, NEXT).unwrap();

    // Within a couple of seconds, a member's fresh credentials are made with the new secret.
    let next = TurnSecret::new(NEXT.as_bytes().to_vec()).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ann = b.connect(1).await;
        let turn = ann.ice_servers()[1].clone();
        let username = turn.username.unwrap();
        let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
        let expected = peerbubble_turn::credentials::issue(&next, &id(1).to_string(), expiry - 600, 600).unwrap();
        if turn.credential.as_deref() == Some(expected.password.as_str()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rotation was not picked up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let user = id(1).to_string();
    for (label, secret) in [("new secret", NEXT), ("old secret within the overlap", SECRET)] {
        let run = uclient(&["-W", secret, "-u", &user, "-c", "-n", "20"], udp, peer_port).await;
        assert_eq!(run.received, 20, "{label}: {}", run.output);
    }
    b.stop().await;
}
