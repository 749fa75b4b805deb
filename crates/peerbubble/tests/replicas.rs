//! Replicas of one bubble on one real NATS server with JetStream, as real `peerbubble bubble-server` processes
//! (issue 17): members on different replicas see each other's presence and reach each other; a group whose
//! members sit on both keeps one commit order under concurrent commits; a killed replica's members reconnect to
//! the other and go on; a NATS restart heals by itself; two bubbles on one NATS cannot see each other's
//! subjects; and what the replicas put on NATS is the wire's own frames and numbers, never more.
//!
//! Each test starts its own `nats-server` on a free loopback port, with its own JetStream store and one account
//! per bubble (subject permissions limited to the bubble's own subjects), and stops it at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt as _};
use peerbubble_peer::SignalClient;
use peerbubble_proto::{ErrorCode, IdentityKey, MemberId, ServerFrame};

const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn nats_binary() -> PathBuf {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nats-server is not installed (cargo xtask test installs Debian's nats-server)")
}

/// A NATS server with JetStream and one account per bubble.
struct Nats {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

const BUBBLES: [&str; 2] = ["alpha", "bravo"];

impl Nats {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nats = Self { port: free_port(), dir, child: None };
        let mut accounts = String::new();
        for bubble in BUBBLES {
            // The bubble's servers may use only the bubble's subjects, its ledger and JetStream's API in their
            // own account; a capture user (the test's eavesdropper) sees everything in the account.
            accounts += &format!(
                "  {upper} {{\n    jetstream: enabled\n    users = [\n      {{ user: {bubble}-server, password: \
                 {bubble}-secret, permissions: {{ publish: [\"pb.{bubble}.>\", \"$JS.API.>\", \
                 \"$KV.pb-ledger-{bubble}.>\", \"$KV.pb-gaps-{bubble}.>\", \"$KV.pb-kp-{bubble}.>\", \"_INBOX.>\"], subscribe: [\"pb.{bubble}.>\", \"_INBOX.>\"] }} }}\n      \
                 {{ user: {bubble}-capture, password: capture-secret }}\n    ]\n  }}\n",
                upper = bubble.to_uppercase()
            );
        }
        for bubble in BUBBLES {
            let creds = nats.dir.path().join(format!("{bubble}-creds"));
            std::fs::create_dir(&creds).unwrap();
            std::fs::write(creds.join("user"), format!("{bubble}-server\n")).unwrap();
            std::fs::write(creds.join("password"), format!("{bubble}-secret\n")).unwrap();
        }
        // Another process may take the free port before nats-server binds it (tests run side by side): then
        // nats-server exits, and another port is tried.
        for attempt in 0.. {
            let config = format!(
                "host: 127.0.0.1\nport: {}\njetstream {{ store_dir: \"{}\" }}\naccounts {{\n{accounts}}}\n",
                nats.port,
                nats.store().display()
            );
            std::fs::write(nats.dir.path().join("nats.conf"), config).unwrap();
            if nats.launch() {
                break;
            }
            assert!(attempt < 5, "nats-server did not start: {}", nats.log());
            nats.port = free_port();
        }
        nats
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn credentials(&self, bubble: &str) -> PathBuf {
        self.dir.path().join(format!("{bubble}-creds"))
    }

    /// Starts (again) on the same port with the same store.
    fn restart(&mut self) {
        assert!(self.launch(), "nats-server did not start again: {}", self.log());
    }

    /// Starts nats-server; false if it exited before it was ready (its port was taken).
    fn launch(&mut self) -> bool {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("nats.log")).unwrap();
        let child = Command::new(nats_binary())
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            // Its own log says it is ready: a connection alone could reach whoever else holds the port.
            if self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
                self.child = None;
                return false;
            }
            if self.log().contains("Server is ready") && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            assert!(Instant::now() < deadline, "nats-server did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// A client of `bubble`'s account as `user`.
    async fn client(&self, user: &str, password: &str) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(self.url())
            .await
            .unwrap()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key(seed: u16) -> IdentityKey {
    let mut bytes = [9u8; 32];
    bytes[..2].copy_from_slice(&seed.to_be_bytes());
    IdentityKey::from_seed(&bytes)
}

fn id(seed: u16) -> MemberId {
    key(seed).public_key().member_id()
}

const ANN: u16 = 1;
const BOB: u16 = 2;
const CAT: u16 = 3;
const DAN: u16 = 4;

fn bubble_file(dir: &Path, bubble: &str) -> PathBuf {
    let mut yaml = format!("bubble: {bubble}\ncategories:\n  - {{id: cell}}\nmembers:\n");
    for (seed, name) in [(ANN, "Ann"), (BOB, "Bob"), (CAT, "Cat"), (DAN, "Dan")] {
        yaml += &format!("  - {{public_key: {}, display_name: {name}, categories: [cell]}}\n", key(seed).public_key());
    }
    let path = dir.join(format!("{bubble}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A `peerbubble bubble-server` process, one replica of a bubble.
struct Replica {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn start(nats: &Nats, bubble: &str, dir: &Path) -> Self {
        Self::start_with(nats, bubble, dir, &[])
    }

    /// A replica with more arguments (the JetStream mailbox and its settings).
    fn start_with(nats: &Nats, bubble: &str, dir: &Path, more: &[&str]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("{bubble}-{}.log", addr.port()));
        let child = Command::new(env!("CARGO_BIN_EXE_peerbubble"))
            .arg("bubble-server")
            .args(["--listen", &addr.to_string(), "--nats", &nats.url()])
            .arg("--bubble-file")
            .arg(bubble_file(dir, bubble))
            .arg("--nats-credentials")
            .arg(nats.credentials(bubble))
            .args(more)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let replica = Self { addr, child, log };
        replica.wait_ready();
        replica
    }

    /// GET `path`: (status, whole response).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(self.addr).ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some((response.split(' ').nth(1)?.parse().ok()?, response))
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while self.get("/readyz").map(|(status, _)| status) != Some(200) {
            assert!(Instant::now() < deadline, "replica not ready: {}", std::fs::read_to_string(&self.log).unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/signal", self.addr)
    }

    async fn connect(&self, seed: u16) -> SignalClient {
        SignalClient::connect(&self.url(), &key(seed)).await.unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads frames until one matches.
async fn expect<T>(client: &mut SignalClient, what: &str, mut pick: impl FnMut(&ServerFrame) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_timeout(left).await {
            Ok(frame) => {
                if let Some(found) = pick(&frame) {
                    return found;
                }
            }
            Err(err) => panic!("waiting for {what}: {err}"),
        }
    }
}

async fn presence(client: &mut SignalClient, member: MemberId, online: bool) {
    expect(client, &format!("presence {member} {online}"), |f| match f {
        ServerFrame::Presence { member: m, online: o } if *m == member && *o == online => Some(()),
        _ => None,
    })
    .await;
}

/// The `ack` (sessions) or the error code of frame `id`.
async fn answer(client: &mut SignalClient, id: u64) -> Result<u32, ErrorCode> {
    expect(client, "ack or error", |f| match f {
        ServerFrame::Ack { id: acked, sessions, .. } if *acked == id => Some(Ok(*sessions)),
        ServerFrame::Error { id: Some(refused), code, .. } if *refused == id => Some(Err(*code)),
        _ => None,
    })
    .await
}

async fn delivered(client: &mut SignalClient) -> (MemberId, Vec<u8>) {
    expect(client, "deliver", |f| match f {
        ServerFrame::Deliver { from, body, .. } => Some((*from, body.to_bytes())),
        _ => None,
    })
    .await
}

/// Connects `seed` and waits until it sees `others` online (presence crosses replicas through NATS).
async fn join(replica: &Replica, seed: u16, others: &[u16]) -> SignalClient {
    let mut client = replica.connect(seed).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !others.iter().all(|o| client.online().contains(&id(*o))) {
        assert!(tokio::time::Instant::now() < deadline, "member {seed} never saw {others:?} online");
        let _ = client.next_timeout(Duration::from_millis(100)).await;
    }
    client
}

const GROUP: [u8; 16] = *b"replicated-group";

/// Two replicas of bubble alpha, Ann on the first and Bob on the second, each seeing the other online.
async fn two_replicas(nats: &Nats, dir: &Path) -> (Replica, Replica, SignalClient, SignalClient) {
    let one = Replica::start(nats, "alpha", dir);
    let two = Replica::start(nats, "alpha", dir);
    let mut ann = one.connect(ANN).await;
    let bob = join(&two, BOB, &[ANN]).await;
    presence(&mut ann, id(BOB), true).await;
    (one, two, ann, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_replicas_see_reach_and_commit_in_one_order() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    // Presence crosses replicas both ways: Ann (one) sees Bob (two) come online, and Bob's first directory
    // already shows Ann online.
    let (one, two, mut ann, mut bob) = two_replicas(&nats, dir.path()).await;

    // Relay across replicas, and the ack counts the session on the other replica.
    let sent = ann.send(id(BOB), b"ann to bob").await.unwrap();
    assert_eq!(answer(&mut ann, sent).await, Ok(1));
    assert_eq!(delivered(&mut bob).await, (id(ANN), b"ann to bob".to_vec()));
    // To one session, named by its id (which names its replica too).
    let sent = bob.send_to(id(ANN), Some(ann.session()), b"bob to ann's session").await.unwrap();
    assert_eq!(answer(&mut bob, sent).await, Ok(1));
    assert_eq!(delivered(&mut ann).await, (id(BOB), b"bob to ann's session".to_vec()));
    assert_ne!(ann.session().0 >> 32, bob.session().0 >> 32, "session ids name their replica");

    // A group with members on both replicas: Ann (one) and Bob (two) race for every epoch; exactly one wins
    // each, the other is told the epoch moved, and Cat (two) and Dan (one) see the winners in one order.
    let mut cat = join(&two, CAT, &[ANN, BOB]).await;
    let mut dan = join(&one, DAN, &[ANN, BOB, CAT]).await;
    let mut winners = Vec::new();
    for epoch in 0..12u64 {
        let to_a = [id(BOB), id(CAT), id(DAN)];
        let to_b = [id(ANN), id(CAT), id(DAN)];
        let body_a = format!("ann@{epoch}");
        let body_b = format!("bob@{epoch}");
        let (a, b) = tokio::join!(
            ann.commit(&GROUP, epoch, &to_a, body_a.as_bytes()),
            bob.commit(&GROUP, epoch, &to_b, body_b.as_bytes())
        );
        let (ra, rb) = tokio::join!(answer(&mut ann, a.unwrap()), answer(&mut bob, b.unwrap()));
        let winner = match (ra, rb) {
            (Ok(3), Err(ErrorCode::CommitConflict)) => body_a,
            (Err(ErrorCode::CommitConflict), Ok(3)) => body_b,
            other => panic!("epoch {epoch}: both or neither won: {other:?}"),
        };
        winners.push(winner.into_bytes());
    }
    for member in [&mut cat, &mut dan] {
        let mut seen = Vec::new();
        while seen.len() < winners.len() {
            seen.push(delivered(member).await.1);
        }
        assert_eq!(seen, winners, "{} saw another order", member.member());
    }

    // Leaving is heard on the other replica at once (a graceful close), not after a timeout.
    drop(bob);
    presence(&mut ann, id(BOB), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_and_a_restarted_nats_heal_without_losing_what_was_acknowledged() {
    let mut nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (one, mut two, mut ann, mut bob) = two_replicas(&nats, dir.path()).await;
    for i in 0..20u32 {
        let sent = ann.send(id(BOB), format!("before {i}").as_bytes()).await.unwrap();
        assert_eq!(answer(&mut ann, sent).await, Ok(1));
    }
    // Everything acknowledged was delivered before the replica dies.
    for i in 0..20u32 {
        assert_eq!(delivered(&mut bob).await.1, format!("before {i}").into_bytes());
    }

    // Replica two dies without a word: its members are offline for the others once it stops beating, and
    // they reconnect to the replica left (as a Service would send them) and go on.
    two.kill();
    let killed = Instant::now();
    presence(&mut ann, id(BOB), false).await;
    assert!(killed.elapsed() < Duration::from_secs(10));
    let mut bob = join(&one, BOB, &[ANN]).await;
    presence(&mut ann, id(BOB), true).await;
    let sent = ann.send(id(BOB), b"after the kill").await.unwrap();
    assert_eq!(answer(&mut ann, sent).await, Ok(1));
    assert_eq!(delivered(&mut bob).await.1, b"after the kill".to_vec());

    // A commit before NATS restarts takes epoch 0 for good (the ledger is on JetStream's disk).
    let three = Replica::start(&nats, "alpha", dir.path());
    let mut cat = join(&three, CAT, &[ANN, BOB]).await;
    let first = ann.commit(&GROUP, 0, &[id(BOB), id(CAT)], b"epoch 0").await.unwrap();
    assert_eq!(answer(&mut ann, first).await, Ok(2));
    assert_eq!(delivered(&mut cat).await.1, b"epoch 0".to_vec());

    nats.restart();
    // The replicas reconnect by themselves; until then cross-replica traffic may be refused, never lost
    // silently: every send is either acknowledged to a session or refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0u32;
    let body = loop {
        attempt += 1;
        let body = format!("after the restart {attempt}");
        let sent = ann.send(id(CAT), body.as_bytes()).await;
        if let Ok(sent) = sent
            && answer(&mut ann, sent).await == Ok(1)
        {
            break body;
        }
        assert!(Instant::now() < deadline, "replicas did not recover from the NATS restart");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    loop {
        let (from, got) = delivered(&mut cat).await;
        if got == body.as_bytes() {
            assert_eq!(from, id(ANN));
            break;
        }
    }
    let stale = bob.commit(&GROUP, 0, &[id(ANN), id(CAT)], b"late epoch 0").await.unwrap();
    assert_eq!(answer(&mut bob, stale).await, Err(ErrorCode::CommitConflict), "the ledger survived the restart");
    let next = bob.commit(&GROUP, 1, &[id(ANN), id(CAT)], b"epoch 1").await.unwrap();
    assert_eq!(answer(&mut bob, next).await, Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bubbles_on_one_nats_cannot_see_each_other_and_nats_carries_only_wire_frames() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    // Eavesdroppers: alpha's server credentials trying bravo's subjects, and a user of bravo's account
    // listening to everything in it.
    let alpha_server = nats.client("alpha-server", "alpha-secret").await;
    let mut alpha_on_bravo = alpha_server.subscribe("pb.bravo.>").await.unwrap();
    let bravo_capture = nats.client("bravo-capture", "capture-secret").await;
    let mut bravo_everything = bravo_capture.subscribe(">").await.unwrap();
    let alpha_capture = nats.client("alpha-capture", "capture-secret").await;
    let mut alpha_everything = alpha_capture.subscribe(">").await.unwrap();
    alpha_capture.flush().await.unwrap();
    bravo_capture.flush().await.unwrap();

    let alpha = [Replica::start(&nats, "alpha", dir.path()), Replica::start(&nats, "alpha", dir.path())];
    let bravo = [Replica::start(&nats, "bravo", dir.path()), Replica::start(&nats, "bravo", dir.path())];
    // The same keys are members of both bubbles here (the worst case for correlation): still apart.
    let mut ann_a = alpha[0].connect(ANN).await;
    let mut bob_a = join(&alpha[1], BOB, &[ANN]).await;
    let mut ann_b = bravo[0].connect(ANN).await;
    let bob_b = join(&bravo[1], BOB, &[ANN]).await;
    assert!(!bob_b.online().contains(&id(CAT)));
    let mut sent_frames = Vec::new();
    for i in 0..5 {
        let body = format!("alpha envelope {i}");
        let sent = ann_a.send(id(BOB), body.as_bytes()).await.unwrap();
        assert_eq!(answer(&mut ann_a, sent).await, Ok(1));
        sent_frames.push(body);
        let sent = ann_b.send(id(BOB), format!("bravo envelope {i}").as_bytes()).await.unwrap();
        assert_eq!(answer(&mut ann_b, sent).await, Ok(1));
    }
    for body in &sent_frames {
        assert_eq!(delivered(&mut bob_a).await.1, body.as_bytes());
    }

    // Gather what each listener heard for a moment more (heartbeats included).
    let collect = |sub: &mut async_nats::Subscriber| {
        let mut heard = Vec::new();
        while let Some(Some(message)) = sub.next().now_or_never() {
            heard.push(message);
        }
        heard
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cross = collect(&mut alpha_on_bravo);
    assert!(cross.is_empty(), "alpha's server read bravo's subjects: {:?}", cross.first().map(|m| &m.subject));
    let bravo_heard = collect(&mut bravo_everything);
    assert!(bravo_heard.iter().any(|m| m.subject.starts_with("pb.bravo.")), "the capture works");
    assert!(
        bravo_heard.iter().all(|m| !m.subject.starts_with("pb.alpha.") && !m.subject.contains("ledger-alpha")),
        "bravo's account heard alpha"
    );

    // In alpha's account: presence messages (member ids and numbers), forwarded `deliver` frames exactly as a
    // member gets them (the body as the sender sent it, nothing added), answers with counts only.
    let alpha_heard = collect(&mut alpha_everything);
    let mut forwarded = 0;
    for message in &alpha_heard {
        let subject = message.subject.as_str();
        if subject == "pb.alpha.presence" || subject.starts_with("pb.alpha.snap.") {
            assert!(
                message.payload.is_empty()
                    || peerbubble_proto::cluster::PresenceMessage::decode(&message.payload).is_ok(),
                "unexpected bytes on {subject}"
            );
        } else if subject.starts_with("pb.alpha.to.") {
            // A batch of `deliver` frames, each as the member gets it.
            for forward in peerbubble_proto::cluster::decode_forwards(&message.payload).unwrap() {
                let frame = peerbubble_proto::decode_server_frame(forward.frame).unwrap();
                let ServerFrame::Deliver { from, body, seq: None, .. } = frame else {
                    panic!("not a deliver: {frame:?}")
                };
                assert_eq!((from, forward.to.as_slice()), (id(ANN), &[id(BOB)][..]));
                assert!(sent_frames.iter().any(|s| s.as_bytes() == body.to_bytes()));
                forwarded += 1;
            }
        } else if subject.starts_with("pb.alpha.re.") {
            // Answers: ids and counts only.
            assert!(
                peerbubble_proto::cluster::decode_answers(&message.payload).is_ok(),
                "unexpected bytes on {subject}"
            );
        } else if subject.starts_with("_INBOX.") {
            // Snapshot answers (presence messages) and JetStream API answers.
            assert!(
                peerbubble_proto::cluster::PresenceMessage::decode(&message.payload).is_ok()
                    || message.payload.first() == Some(&b'{')
                    || message.payload.is_empty(),
                "unexpected bytes on {subject}"
            );
        } else {
            assert!(
                subject.starts_with("$JS.") || subject.starts_with("$KV.pb-ledger-alpha."),
                "unexpected subject {subject}"
            );
        }
    }
    assert_eq!(forwarded, sent_frames.len(), "every cross-replica envelope went through NATS once");
}

/// The whole journey across replicas with real end-to-end encryption: a native peer on replica one and
/// `peerbubble chat --echo` on replica two start an MLS conversation through the relay (KeyPackages, the commit
/// ordered by the shared ledger, the welcome), chat, then open a DataChannel (its offer, answer and ICE cross
/// replicas as envelopes). Everything NATS carried in the bubble's account, and JetStream's files on disk, are
/// then scanned: no message text, no SDP, no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_conversation_across_replicas_leaves_nothing_readable_on_nats() {
    use peerbubble_client_core::Event;
    use peerbubble_peer::node::{Node, NodeConfig, NodeEvent};

    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let capture = nats.client("alpha-capture", "capture-secret").await;
    let mut everything = capture.subscribe(">").await.unwrap();
    capture.flush().await.unwrap();
    let one = Replica::start(&nats, "alpha", dir.path());
    let two = Replica::start(&nats, "alpha", dir.path());

    let bot = key(BOB);
    let key_file = dir.path().join("bot.key");
    std::fs::write(&key_file, format!("{}\n", bot.to_seed_base64().as_str())).unwrap();
    let _bot = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_peerbubble"))
            .args(["chat", "--echo", "--rtc-bind", "127.0.0.1:0", "--url", &two.url(), "--key"])
            .arg(&key_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let loopback = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    let mut node = Node::start(NodeConfig { bind: loopback, ..NodeConfig::new(one.url()) }, key(ANN)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let conversation = loop {
        let _ = node.start_direct(id(BOB)).await;
        if let Some(c) = node.direct(id(BOB)).await.unwrap() {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bot on the other replica never answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    const CANARY: &str = "CANARY-replicas-7f3e-hold-the-north-bridge";
    node.send_text(conversation, CANARY).await.unwrap();
    let echoed = format!("echo: {CANARY}");
    node.wait_for("echo", WAIT * 2, |e| matches!(e, NodeEvent::Core(Event::Message { text, .. }) if *text == echoed))
        .await
        .unwrap();
    node.wait_for("a DataChannel", WAIT * 2, |e| matches!(e, NodeEvent::ChannelOpen(_))).await.unwrap();
    node.send_text(conversation, "over the channel").await.unwrap();
    node.wait_for(
        "echo over the channel",
        WAIT,
        |e| matches!(e, NodeEvent::Core(Event::Message { text, .. }) if text == "echo: over the channel"),
    )
    .await
    .unwrap();
    node.shutdown().await.unwrap();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut heard = Vec::new();
    while let Some(Some(message)) = everything.next().now_or_never() {
        heard.extend_from_slice(message.subject.as_bytes());
        heard.extend_from_slice(&message.payload);
    }
    let store = all_bytes(&nats.store());
    let (heard, store) = (String::from_utf8_lossy(&heard), String::from_utf8_lossy(&store));
    // The scans can fail: the capture heard the conversation's envelopes, the store holds the ledger.
    assert!(heard.contains("\"type\":\"deliver\""), "the capture heard forwarded envelopes");
    assert!(store.contains("KV_pb-ledger-alpha"), "the JetStream store was read");
    let wire = String::from(peerbubble_proto::Opaque::from_bytes(CANARY.as_bytes()).unwrap());
    let seeds = [key(ANN).to_seed_base64().as_str().to_owned(), bot.to_seed_base64().as_str().to_owned()];
    for needle in
        [CANARY, wire.as_str(), "over the channel", "a=fingerprint", "candidate:", "v=0\r\n", &seeds[0], &seeds[1]]
    {
        assert!(!heard.contains(needle), "{needle} crossed NATS readably");
        assert!(!store.contains(needle), "{needle} reached JetStream's files");
    }
}

/// Every file under `dir`, concatenated (deleted JetStream messages may still sit in a block file: read too).
fn all_bytes(dir: &Path) -> Vec<u8> {
    let (mut bytes, mut dirs) = (Vec::new(), vec![dir.to_path_buf()]);
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                bytes.extend(std::fs::read(&path).unwrap());
            }
        }
    }
    bytes
}

/// The canary over a real conversation that waited in JetStream (issue 17): the native peer publishes its
/// KeyPackages and goes down; Ann, on the other replica, starts a conversation with it from a KeyPackage claimed
/// in the bucket and writes; the Welcome and her message wait in the bot's JetStream queue; the bot comes back
/// from its key store, joins and answers. Neither NATS traffic (an eavesdropper in the account, reading from the
/// start) nor JetStream's files (read while the entries wait and at the end) hold the text, an SDP, a candidate
/// or a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_that_waited_in_jetstream_leaves_only_ciphertext_there() {
    use peerbubble_client_core::Event;
    use peerbubble_peer::node::{Node, NodeConfig, NodeEvent};
    use std::sync::{Arc, Mutex};

    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    // The eavesdropper reads in a task of its own from the first message on: a subscription read only at the end
    // overflows and drops what matters.
    let capture = nats.client("alpha-capture", "capture-secret").await;
    let mut everything = capture.subscribe(">").await.unwrap();
    capture.flush().await.unwrap();
    let heard = Arc::new(Mutex::new(Vec::<u8>::new()));
    let listening = {
        let heard = heard.clone();
        tokio::spawn(async move {
            while let Some(message) = everything.next().await {
                let mut heard = heard.lock().unwrap();
                heard.extend_from_slice(message.subject.as_bytes());
                heard.extend_from_slice(format!("{:?}", message.headers).as_bytes());
                heard.extend_from_slice(&message.payload);
            }
        })
    };
    let one = Replica::start_with(&nats, "alpha", dir.path(), &MAILBOX);
    let two = Replica::start_with(&nats, "alpha", dir.path(), &MAILBOX);

    let bot = key(BOB);
    let bot_id = id(BOB);
    let key_file = dir.path().join("bot.key");
    std::fs::write(&key_file, format!("{}\n", bot.to_seed_base64().as_str())).unwrap();
    let store = dir.path().join("bot-store");
    let bot_process = |import: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_peerbubble"));
        command.args(["chat", "--echo", "--rtc-bind", "127.0.0.1:0", "--url", &two.url(), "--store"]).arg(&store);
        if import {
            command.arg("--key").arg(&key_file);
        }
        let log = std::fs::File::create(dir.path().join(if import { "bot-1.log" } else { "bot-2.log" })).unwrap();
        KillOnDrop(
            command
                .env("PEERBUBBLE_PASSPHRASE", "nine ravens over the west quay")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    // The bot connects once (its KeyPackages go to the bucket), then its machine goes down hard.
    let mut first = bot_process(true);
    let kv = async_nats::jetstream::new(nats.client("alpha-capture", "capture-secret").await);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(bucket) = kv.get_key_value("pb-kp-alpha").await
            && bucket.get(bot_id.to_string()).await.ok().flatten().is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the bot never published its KeyPackages");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = first.0.kill();
    let _ = first.0.wait();

    let loopback = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    let mut node =
        Node::start(NodeConfig { bind: loopback, auto_connect: false, ..NodeConfig::new(one.url()) }, key(ANN))
            .await
            .unwrap();
    let deadline = Instant::now() + WAIT;
    while node.directory().await.unwrap().iter().any(|e| e.member == bot_id && e.online) {
        assert!(Instant::now() < deadline, "the bot's session never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The bot is away from every replica: its KeyPackage is claimed in the bucket, the Welcome waits.
    node.start_direct(bot_id).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let conversation = loop {
        if let Some(c) = node.direct(bot_id).await.unwrap() {
            break c;
        }
        assert!(Instant::now() < deadline, "no conversation from a claimed KeyPackage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    const CANARY: &str = "CANARY-jetstream-mailbox-91c4-the-ferry-leaves-at-six";
    node.send_text(conversation, CANARY).await.unwrap();
    node.wait_for("stored for later", WAIT, |e| matches!(e, NodeEvent::StoredForLater(m) if *m == bot_id))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while kept_in_jetstream(&nats, bot_id).await < 2 {
        assert!(Instant::now() < deadline, "the Welcome and the message do not wait in JetStream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = String::from_utf8_lossy(&all_bytes(&nats.store())).into_owned();
    assert!(waiting.contains("pb.alpha.mbox.") && waiting.contains("Pb-From"), "the waiting entries were read");

    // The bot comes back from its key store alone: it joins from the Welcome and answers what waited.
    let _second = bot_process(false);
    let echoed = format!("echo: {CANARY}");
    if let Err(e) = node
        .wait_for("echo", WAIT * 2, |e| matches!(e, NodeEvent::Core(Event::Message { text, .. }) if *text == echoed))
        .await
    {
        let logs = ["bot-1.log", "bot-2.log"].map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default());
        panic!("{e}\nfirst run:\n{}\nafter the restart:\n{}", logs[0], logs[1]);
    }
    node.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    listening.abort();

    let heard = String::from_utf8_lossy(&heard.lock().unwrap()).into_owned();
    let store = String::from_utf8_lossy(&all_bytes(&nats.store())).into_owned();
    // The scans can fail: the capture heard the envelope kept for the bot, the files hold its queue and the bucket.
    assert!(
        heard.contains("pb.alpha.mbox.") && heard.contains("\"type\":\"deliver\""),
        "the capture heard the mailbox"
    );
    assert!(store.contains("KV_pb-kp-alpha"), "the JetStream store was read");
    let wire = String::from(peerbubble_proto::Opaque::from_bytes(CANARY.as_bytes()).unwrap());
    let seeds = [key(ANN).to_seed_base64().as_str().to_owned(), bot.to_seed_base64().as_str().to_owned()];
    for needle in
        [CANARY, wire.as_str(), "echo: CANARY", "a=fingerprint", "candidate:", "v=0\r\n", &seeds[0], &seeds[1]]
    {
        assert!(!heard.contains(needle), "{needle} crossed NATS readably");
        assert!(!store.contains(needle), "{needle} reached JetStream's files");
        assert!(!waiting.contains(needle), "{needle} waited in JetStream readably");
    }
}

/// A child process stopped with the test, whatever happens.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bad input from NATS (a broken or hostile replica, or anyone holding the bubble's NATS credentials): malformed
/// presence messages and forward batches are refused whole and counted, the replica keeps working, and nothing
/// of the garbage reaches a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_on_nats_are_refused_and_change_nothing() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (_one, two, mut ann, mut bob) = two_replicas(&nats, dir.path()).await;
    let replica = (bob.session().0 >> 32) as u32;

    let intruder = nats.client("alpha-capture", "capture-secret").await;
    let garbage: [&[u8]; 4] = [b"", b"Cxx", &[b'C'; 40], b"{\"type\":\"deliver\"}"];
    for bytes in garbage {
        intruder.publish("pb.alpha.presence", bytes.to_vec().into()).await.unwrap();
        intruder.publish(format!("pb.alpha.to.{replica}"), bytes.to_vec().into()).await.unwrap();
        intruder.publish(format!("pb.alpha.re.{replica}"), bytes.to_vec().into()).await.unwrap();
    }
    intruder.flush().await.unwrap();

    // Still working both ways, and Bob got nothing but Ann's envelope.
    let sent = ann.send(id(BOB), b"still here").await.unwrap();
    assert_eq!(answer(&mut ann, sent).await, Ok(1));
    assert_eq!(delivered(&mut bob).await, (id(ANN), b"still here".to_vec()));
    let (_, text) = two.get("/metrics").unwrap();
    let count = |reason: &str| {
        text.lines()
            .find(|l| l.starts_with("peerbubble_signal_frame_errors_total") && l.contains(reason))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("cluster_presence") >= 3, "malformed presence refused and counted:\n{text}");
    assert!(count("cluster_forward") >= 3, "malformed forward batches refused and counted:\n{text}");
    assert!(count("cluster_answer") >= 3, "malformed answer batches refused and counted:\n{text}");
    // Presence was not disturbed: Bob is still online for Ann.
    let sent = bob.send(id(ANN), b"and back").await.unwrap();
    assert_eq!(answer(&mut bob, sent).await, Ok(1));
    assert_eq!(delivered(&mut ann).await.1, b"and back".to_vec());
}

/// The shared mailbox's settings for a replica (and room for Ann's bursts: a connection may send 100 frames at
/// once by default).
const MAILBOX: [&str; 7] = [
    "--mailbox-jetstream",
    "--mailbox-member-entries",
    "110",
    "--frame-burst",
    "400",
    "--member-frames-per-second",
    "400",
];

/// The `ack` of frame `id`: (sessions, stored), or the error code.
async fn stored(client: &mut SignalClient, id: u64) -> Result<(u32, u32), ErrorCode> {
    expect(client, "ack or error", |f| match f {
        ServerFrame::Ack { id: acked, sessions, stored } if *acked == id => Some(Ok((*sessions, *stored))),
        ServerFrame::Error { id: Some(refused), code, .. } if *refused == id => Some(Err(*code)),
        _ => None,
    })
    .await
}

/// What a returning member reads: kept envelopes (seq, body), live ones, gaps (seq, lost, groups).
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Kept(u64, Vec<u8>),
    Live(Vec<u8>),
    Gap(u64, u64, Vec<peerbubble_proto::GroupId>),
}

async fn got(client: &mut SignalClient) -> Got {
    expect(client, "deliver or gap", |f| match f {
        ServerFrame::Deliver { body, seq: Some(seq), .. } => Some(Got::Kept(*seq, body.to_bytes())),
        ServerFrame::Deliver { body, seq: None, .. } => Some(Got::Live(body.to_bytes())),
        ServerFrame::Gap { seq, lost, groups } => Some(Got::Gap(*seq, *lost, groups.clone())),
        _ => None,
    })
    .await
}

async fn stock(client: &mut SignalClient) -> (u32, bool) {
    expect(client, "key_package_stock", |f| match f {
        ServerFrame::KeyPackageStock { one_time, last_resort } => Some((*one_time, *last_resort)),
        _ => None,
    })
    .await
}

/// Nothing more is delivered for a while.
async fn nothing_delivered(client: &mut SignalClient) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_timeout(left).await {
            Ok(frame @ (ServerFrame::Deliver { .. } | ServerFrame::Gap { .. })) => panic!("delivered again: {frame:?}"),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn key_package(label: &str) -> peerbubble_proto::Opaque {
    peerbubble_proto::Opaque::from_bytes(format!("KP-{label}-{}", "x".repeat(2000)).as_bytes()).unwrap()
}

/// The label of the KeyPackage handed out for claim `id`, or none.
async fn claim(client: &mut SignalClient, id: u64, of: u16) -> Option<String> {
    client.send_frame(&peerbubble_proto::ClientFrame::ClaimKeyPackage { id, member: self::id(of) }).await.unwrap();
    expect(client, "claimed_key_package", |f| match f {
        ServerFrame::ClaimedKeyPackage { id: answered, key_package, .. } if *answered == id => {
            Some(key_package.as_ref().map(|kp| {
                let text = String::from_utf8(kp.to_bytes()).unwrap();
                text.trim_start_matches("KP-").split('-').next().unwrap().to_owned()
            }))
        }
        _ => None,
    })
    .await
}

/// The messages JetStream keeps for `member` in bubble alpha's mailbox, as a user of alpha's account sees them.
async fn kept_in_jetstream(nats: &Nats, member: MemberId) -> usize {
    let capture = nats.client("alpha-capture", "capture-secret").await;
    let js = async_nats::jetstream::new(capture);
    let stream = js.get_stream("pb-mbox-alpha").await.unwrap();
    let mut subjects = stream.info_with_subjects(format!("pb.alpha.mbox.{member}")).await.unwrap();
    let mut count = 0;
    while let Some(item) = subjects.next().await {
        count += item.unwrap().1;
    }
    count
}

/// Bob acknowledges everything up to `upto`; waits until JetStream has deleted all of it.
async fn acknowledge_all(nats: &Nats, bob: &mut SignalClient, upto: u64) {
    bob.send_frame(&peerbubble_proto::ClientFrame::Received { upto }).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while kept_in_jetstream(nats, id(BOB)).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "acknowledged entries were not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The offline mailbox of a bubble with two replicas lives in JetStream (issue 17): what is sent to a member away
/// from every replica is acknowledged as stored, survives the replica that kept it, and reaches the member in
/// order and before live traffic from whichever replica it returns to; acknowledged entries are deleted; a full
/// queue refuses (the sender knows) and leaves a gap; KeyPackages published on one replica are claimed on
/// another, each one-time one once, then the last-resort one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_for_an_absent_member_is_shared_by_the_replicas_in_jetstream() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let mut one = Replica::start_with(&nats, "alpha", dir.path(), &MAILBOX);
    let two = Replica::start_with(&nats, "alpha", dir.path(), &MAILBOX);
    let mut ann = one.connect(ANN).await;
    assert_eq!(stock(&mut ann).await, (0, false), "a bubble with a mailbox announces the stock");
    // Bob is away from both replicas: 50 envelopes kept by replica one, each acknowledged as stored.
    for n in 0..50u32 {
        let sent = ann.send(id(BOB), format!("sealed {n}").as_bytes()).await.unwrap();
        assert_eq!(stored(&mut ann, sent).await, Ok((0, 1)), "envelope {n}");
    }
    // Bad input from NATS: an entry in Bob's queue that no replica wrote (no sender, a body that is not one) is
    // skipped, not delivered, and changes nothing else.
    let capture = async_nats::jetstream::new(nats.client("alpha-capture", "capture-secret").await);
    let forged = capture.publish(format!("pb.alpha.mbox.{}", id(BOB)), "not an envelope {".into()).await.unwrap();
    forged.await.unwrap();
    // Replica one dies; Ann goes on through a new replica: 50 more and a commit of a group Bob is in.
    one.kill();
    let three = Replica::start_with(&nats, "alpha", dir.path(), &MAILBOX);
    let mut ann = three.connect(ANN).await;
    for n in 50..100u32 {
        let sent = ann.send(id(BOB), format!("sealed {n}").as_bytes()).await.unwrap();
        assert_eq!(stored(&mut ann, sent).await, Ok((0, 1)), "envelope {n}");
    }
    let commit = ann.commit(&GROUP, 0, &[id(BOB)], b"sealed commit").await.unwrap();
    assert_eq!(stored(&mut ann, commit).await, Ok((0, 1)));
    assert_eq!(kept_in_jetstream(&nats, id(BOB)).await, 102, "101 and the forged one");

    // Bob returns to replica two, which kept none of it: the 101 in order with growing seq, then live traffic
    // Ann sends once she sees him online.
    let mut bob = two.connect(BOB).await;
    assert_eq!(stock(&mut bob).await, (0, false));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ann.online().contains(&id(BOB)) {
        assert!(tokio::time::Instant::now() < deadline, "Ann never saw Bob come back");
        let _ = ann.next_timeout(Duration::from_millis(50)).await;
    }
    let live = ann.send(id(BOB), b"live after return").await.unwrap();
    assert_eq!(stored(&mut ann, live).await, Ok((1, 0)));
    let mut last = 0;
    for n in 0..100u32 {
        match got(&mut bob).await {
            Got::Kept(seq, body) if seq > last && body == format!("sealed {n}").into_bytes() => last = seq,
            other => panic!("envelope {n} after seq {last}: {other:?}"),
        }
    }
    match got(&mut bob).await {
        Got::Kept(seq, body) if seq > last && body == b"sealed commit" => last = seq,
        other => panic!("the commit: {other:?}"),
    }
    assert_eq!(got(&mut bob).await, Got::Live(b"live after return".to_vec()));

    // Not acknowledged: still there. Acknowledged: deleted from JetStream, not delivered again.
    drop(bob);
    let mut bob = three.connect(BOB).await;
    assert!(matches!(got(&mut bob).await, Got::Kept(_, body) if body == b"sealed 0"), "unacknowledged comes again");
    acknowledge_all(&nats, &mut bob, last).await;
    drop(bob);
    let mut bob = two.connect(BOB).await;
    nothing_delivered(&mut bob).await;

    // A full queue (110 here): the sender is refused, and Cat finds what was kept, then a gap counting the rest.
    for n in 0..112u32 {
        let sent = ann.send(id(CAT), format!("to Cat {n}").as_bytes()).await.unwrap();
        let expected = if n < 110 { Ok((0, 1)) } else { Err(ErrorCode::MailboxFull) };
        assert_eq!(stored(&mut ann, sent).await, expected, "envelope {n} to Cat");
    }
    let mut cat = two.connect(CAT).await;
    for n in 0..110u32 {
        assert!(matches!(got(&mut cat).await, Got::Kept(_, body) if body == format!("to Cat {n}").into_bytes()));
    }
    assert!(matches!(got(&mut cat).await, Got::Gap(_, 2, groups) if groups.is_empty()));

    // KeyPackages published through replica two are claimed through replica three: the one-time ones once
    // each, oldest first, then the last-resort one as often as asked; the stock is told on return.
    for (label, last_resort) in [("first", false), ("second", false), ("spare", true)] {
        let key_package = key_package(label);
        bob.send_frame(&peerbubble_proto::ClientFrame::PublishKeyPackage { key_package, last_resort }).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut again = two.connect(BOB).await;
        if stock(&mut again).await == (2, true) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the KeyPackages were not kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(claim(&mut ann, 900, BOB).await.as_deref(), Some("first"));
    assert_eq!(claim(&mut ann, 901, BOB).await.as_deref(), Some("second"));
    assert_eq!(claim(&mut ann, 902, BOB).await.as_deref(), Some("spare"));
    assert_eq!(claim(&mut ann, 903, BOB).await.as_deref(), Some("spare"));
    assert_eq!(claim(&mut ann, 904, DAN).await, None, "Dan published none");
    let mut bob_again = three.connect(BOB).await;
    assert_eq!(stock(&mut bob_again).await, (0, true));
}

/// Expiry and removal in the shared mailbox: envelopes a member stays away past the time to live from become
/// one gap marker naming the group that lost a commit (counted once, though every replica sweeps), and a member
/// removed from the bubble has what waited for it purged from JetStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_envelopes_become_one_gap_and_a_removed_members_queue_leaves_jetstream() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--mailbox-jetstream", "--mailbox-ttl-secs", "1", "--mailbox-sweep-ms", "200"];
    let one = Replica::start_with(&nats, "alpha", dir.path(), &args);
    let two = Replica::start_with(&nats, "alpha", dir.path(), &args);
    let mut ann = one.connect(ANN).await;
    for body in [&b"one"[..], b"two"] {
        let sent = ann.send(id(DAN), body).await.unwrap();
        assert_eq!(stored(&mut ann, sent).await, Ok((0, 1)));
    }
    let commit = ann.commit(&GROUP, 3, &[id(DAN)], b"a commit Dan misses").await.unwrap();
    assert_eq!(stored(&mut ann, commit).await, Ok((0, 1)));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut dan = two.connect(DAN).await;
    let group = peerbubble_proto::GroupId::from_bytes(&GROUP).unwrap();
    assert!(matches!(got(&mut dan).await, Got::Gap(_, 3, groups) if groups == vec![group]));
    nothing_delivered(&mut dan).await;
    assert_eq!(kept_in_jetstream(&nats, id(DAN)).await, 0);
    let lost: u64 = [&one, &two]
        .iter()
        .filter_map(|r| r.get("/metrics"))
        .flat_map(|(_, text)| {
            text.lines()
                .filter_map(|l| {
                    l.strip_prefix("peerbubble_signal_mailbox_lost_total ").map(|v| v.trim().parse::<u64>().unwrap())
                })
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(lost, 3, "counted once across the replicas");

    // Cat is away with something kept, then removed from the bubble: what waited for her goes at once.
    let sent = ann.send(id(CAT), b"for Cat").await.unwrap();
    assert_eq!(stored(&mut ann, sent).await, Ok((0, 1)));
    assert_eq!(kept_in_jetstream(&nats, id(CAT)).await, 1);
    let path = dir.path().join("alpha.yaml");
    let without_cat: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("Cat"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, without_cat).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while kept_in_jetstream(&nats, id(CAT)).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "a removed member's queue stayed in JetStream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The per-member byte quota holds in JetStream as in the SQLite mailbox, whichever replica keeps: 8 envelopes
/// of 8 000 wire bytes fill Bob's 64 KiB queue on replica one; a ninth is refused there, and on replica two
/// (which kept nothing for Bob yet and reads his queue in JetStream) a large one is refused and a small one
/// still fits. Bob finds what was kept with the gaps at their place; once he acknowledges, his queue has room
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_byte_quota_holds_in_jetstream_across_replicas() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let mut args = MAILBOX.to_vec();
    args.extend(["--mailbox-member-bytes", "65536"]);
    let one = Replica::start_with(&nats, "alpha", dir.path(), &args);
    let two = Replica::start_with(&nats, "alpha", dir.path(), &args);
    let mut ann = one.connect(ANN).await;
    let mut dan = two.connect(DAN).await;
    // 6 000 bytes are 8 000 in the body's wire form: 8 fit in 65 536, a ninth does not.
    let large = |n: u8| vec![n; 6_000];
    for n in 0..9u8 {
        let sent = ann.send(id(BOB), &large(n)).await.unwrap();
        let expected = if n < 8 { Ok((0, 1)) } else { Err(ErrorCode::MailboxFull) };
        assert_eq!(stored(&mut ann, sent).await, expected, "large envelope {n} through replica one");
    }
    let sent = dan.send(id(BOB), &large(9)).await.unwrap();
    assert_eq!(stored(&mut dan, sent).await, Err(ErrorCode::MailboxFull), "replica two reads the queue as full");
    let sent = dan.send(id(BOB), b"small").await.unwrap();
    assert_eq!(stored(&mut dan, sent).await, Ok((0, 1)), "bytes are counted, not entries");
    let sent = ann.send(id(BOB), &large(10)).await.unwrap();
    assert_eq!(stored(&mut ann, sent).await, Err(ErrorCode::MailboxFull), "replica one counts replica two's entry");
    assert_eq!(kept_in_jetstream(&nats, id(BOB)).await, 9);

    let mut bob = two.connect(BOB).await;
    // Ann's replica must have heard Bob come (and then go): a send racing his departure across replicas is
    // forwarded to a replica that no longer has him, and refused as offline rather than kept.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ann.online().contains(&id(BOB)) {
        assert!(tokio::time::Instant::now() < deadline, "Ann never saw Bob come");
        let _ = ann.next_timeout(Duration::from_millis(50)).await;
    }
    for n in 0..8u8 {
        assert!(matches!(got(&mut bob).await, Got::Kept(_, body) if body == large(n)), "large envelope {n}");
    }
    assert!(matches!(got(&mut bob).await, Got::Gap(_, 2, _)), "the two refused after the eighth");
    let last = match got(&mut bob).await {
        Got::Kept(seq, body) if body == b"small" => seq,
        other => panic!("the small one: {other:?}"),
    };
    let last = match got(&mut bob).await {
        Got::Gap(seq, 1, _) if seq > last => seq,
        other => panic!("the last refused: {other:?}"),
    };
    acknowledge_all(&nats, &mut bob, last).await;
    drop(bob);
    let deadline = tokio::time::Instant::now() + WAIT;
    while ann.online().contains(&id(BOB)) {
        assert!(tokio::time::Instant::now() < deadline, "Ann never saw Bob leave");
        let _ = ann.next_timeout(Duration::from_millis(50)).await;
    }
    for n in 11..19u8 {
        let sent = ann.send(id(BOB), &large(n)).await.unwrap();
        assert_eq!(stored(&mut ann, sent).await, Ok((0, 1)), "after the acknowledgement, large envelope {n}");
    }
    let sent = ann.send(id(BOB), &large(19)).await.unwrap();
    assert_eq!(stored(&mut ann, sent).await, Err(ErrorCode::MailboxFull), "and full again at the quota");
}

/// A `send` racing its recipient's departure: replica one still believes Bob is on another replica when Ann sends,
/// and that replica answers that Bob has no session there any more. The envelope is kept in the shared mailbox
/// (Ann's `ack` says stored) and reaches Bob when he returns, rather than being refused as if Bob were gone for
/// good; one answered "over its budget" (Bob is there, slow) is still refused as congested, not kept.
///
/// The other replica is played by the test on NATS (as a user of the bubble's account), so the race happens every
/// run: it announces Bob, answers the snapshot request, and answers each forward with no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_racing_its_recipients_departure_is_kept_in_the_shared_mailbox() {
    use peerbubble_proto::cluster::{ForwardAnswer, PresenceMessage, decode_forwards, encode_answer};
    const FAKE: u32 = 777_777;
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let one = Replica::start_with(&nats, "alpha", dir.path(), &MAILBOX);
    let two = Replica::start_with(&nats, "alpha", dir.path(), &MAILBOX);
    let mut ann = one.connect(ANN).await;
    assert_eq!(stock(&mut ann).await, (0, false));

    let fake = nats.client("alpha-capture", "capture-secret").await;
    let mut snapshots = fake.subscribe(format!("pb.alpha.snap.{FAKE}")).await.unwrap();
    let mut forwards = fake.subscribe(format!("pb.alpha.to.{FAKE}")).await.unwrap();
    fake.flush().await.unwrap();
    let announce = PresenceMessage::Change { replica: FAKE, seq: 1, member: id(BOB), online: true };
    fake.publish("pb.alpha.presence", announce.encode().into()).await.unwrap();
    // Both replicas ask for a snapshot: each is answered.
    let answering = fake.clone();
    let snapshotter = tokio::spawn(async move {
        while let Some(request) = snapshots.next().await {
            let snapshot = PresenceMessage::Snapshot { replica: FAKE, seq: 1, members: vec![id(BOB)] };
            answering.publish(request.reply.unwrap(), snapshot.encode().into()).await.unwrap();
        }
    });
    presence(&mut ann, id(BOB), true).await;

    // Answers the next batch of forwards: each reached no session (congested or not); returns how many.
    let mut answer_forwards = async |congested: bool| {
        let batch = tokio::time::timeout(WAIT, forwards.next()).await.expect("nothing forwarded").unwrap();
        let mut answers = Vec::new();
        let decoded = decode_forwards(&batch.payload).unwrap();
        for forward in &decoded {
            assert_eq!(forward.to, vec![id(BOB)]);
            encode_answer(&mut answers, ForwardAnswer { id: forward.id, sessions: 0, congested });
        }
        fake.publish(batch.reply.unwrap(), answers.into()).await.unwrap();
        decoded.len()
    };

    let sent = ann.send(id(BOB), b"sealed while Bob was leaving").await.unwrap();
    assert_eq!(answer_forwards(false).await, 1);
    assert_eq!(stored(&mut ann, sent).await, Ok((0, 1)), "kept for Bob, not refused as offline");
    let slow = ann.send(id(BOB), b"to a slow Bob").await.unwrap();
    assert_eq!(answer_forwards(true).await, 1);
    assert_eq!(stored(&mut ann, slow).await, Err(ErrorCode::RecipientCongested), "a slow reader is not away");

    // The other replica leaves; Bob returns through replica two and finds the envelope kept, and only it.
    fake.publish("pb.alpha.presence", PresenceMessage::Leaving { replica: FAKE }.encode().into()).await.unwrap();
    fake.flush().await.unwrap();
    presence(&mut ann, id(BOB), false).await;
    assert_eq!(kept_in_jetstream(&nats, id(BOB)).await, 1);
    let mut bob = two.connect(BOB).await;
    assert!(matches!(got(&mut bob).await, Got::Kept(_, body) if body == b"sealed while Bob was leaving"));
    nothing_delivered(&mut bob).await;
    snapshotter.abort();
}
