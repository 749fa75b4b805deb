//! `peerbubble chat` as a member would run it: an echo bot that accepts files, driven by a native peer over a
//! real bubble-server on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use peerbubble_bubble_server::{Config, FileSource, Server};
use peerbubble_client_core::Event;
use peerbubble_peer::node::{Node, NodeConfig, NodeEvent};
use peerbubble_proto::IdentityKey;

const WAIT: Duration = Duration::from_secs(30);

/// The bot process ends with the test, whatever happens.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `peerbubble chat` typed into: its stdin, and its output lines as they come.
struct Typed {
    _process: KillOnDrop,
    input: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Typed {
    /// Takes the process's piped stdin and stdout.
    fn new(mut process: KillOnDrop) -> Self {
        use std::io::BufRead as _;
        let input = process.0.stdin.take().unwrap();
        let output = process.0.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(output).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { _process: process, input, lines }
    }

    /// Types a line.
    fn say(&mut self, line: &str) {
        use std::io::Write as _;
        writeln!(self.input, "{line}").unwrap();
    }

    /// The next output line that contains `what`; fails after `WAIT`.
    fn wait_for(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(_) => panic!("never printed {what:?}"),
            }
        }
    }

    /// Types `/quit` and closes stdin.
    fn quit(mut self) {
        self.say("/quit");
    }
}

/// Waits until the server has `online` members with a session.
async fn until_online(server: &Server, online: u32, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.health().report().online_members != online {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A bubble-server on loopback for a bubble whose `members` (key, display name) all share one category; the
/// server and its signaling URL.
async fn one_category_bubble(dir: &std::path::Path, members: &[(&IdentityKey, &str)]) -> (Server, String) {
    one_category_bubble_with(dir, members, None).await
}

/// The same, keeping an offline mailbox when `mailbox` is given.
async fn one_category_bubble_with(
    dir: &std::path::Path,
    members: &[(&IdentityKey, &str)],
    mailbox: Option<peerbubble_bubble_server::MailboxConfig>,
) -> (Server, String) {
    let mut yaml = String::from("bubble: cli\ncategories:\n  - {id: c}\nmembers:\n");
    for (key, name) in members {
        yaml += &format!("  - {{public_key: {}, display_name: {name}, categories: [c]}}\n", key.public_key());
    }
    std::fs::write(dir.join("bubble.yaml"), yaml).unwrap();
    let config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        bubble_file: dir.join("bubble.yaml"),
        mailbox,
        ..Config::default()
    };
    let server = Server::start(config.clone(), FileSource::new(config.bubble_file.clone(), config.reload_interval))
        .await
        .unwrap();
    server.ready().await;
    let url = format!("ws://{}/v1/signal", server.local_addr());
    (server, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_bot_answers_and_keeps_files() {
    let dir = tempfile::tempdir().unwrap();
    let (me, bot) = (IdentityKey::from_seed(&[21; 32]), IdentityKey::from_seed(&[22; 32]));
    let (server, url) = one_category_bubble(dir.path(), &[(&me, "me"), (&bot, "bot")]).await;
    let key_file = dir.path().join("bot.key");
    std::fs::write(&key_file, format!("{}\n", bot.to_seed_base64().as_str())).unwrap();
    let downloads = dir.path().join("bot-files");
    std::fs::create_dir(&downloads).unwrap();
    let _bot = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_peerbubble"))
            .args(["chat", "--echo", "--rtc-bind", "127.0.0.1:0", "--url", &url, "--key"])
            .arg(&key_file)
            .arg("--download-dir")
            .arg(&downloads)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let bot_id = bot.public_key().member_id();
    let loopback = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    let mut node = Node::start(NodeConfig { bind: loopback, ..NodeConfig::new(&url) }, me).await.unwrap();
    // The bot may still be connecting: ask until its KeyPackage comes back.
    let deadline = tokio::time::Instant::now() + WAIT;
    let conversation = loop {
        let _ = node.start_direct(bot_id).await;
        if let Some(c) = node.direct(bot_id).await.unwrap() {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bot never answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    node.send_text(conversation, "ping over MLS").await.unwrap();
    node.wait_for(
        "echo",
        WAIT,
        |e| matches!(e, NodeEvent::Core(Event::Message { text, .. }) if text == "echo: ping over MLS"),
    )
    .await
    .unwrap();
    node.wait_for("channel", WAIT, |e| matches!(e, NodeEvent::ChannelOpen(_))).await.unwrap();
    let file = dir.path().join("orders.txt");
    std::fs::write(&file, "hold the bridge until 0600\n".repeat(5000)).unwrap();
    node.send_file(bot_id, &file).await.unwrap();
    node.wait_for("file delivered", WAIT, |e| matches!(e, NodeEvent::Core(Event::FileSent { .. }))).await.unwrap();
    // The bot confirms the file once verified; writing its last bytes to the download directory may finish a
    // moment later in its own process.
    let sent = std::fs::read(&file).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read(downloads.join("orders.txt")).ok().as_ref() != Some(&sent) {
        assert!(tokio::time::Instant::now() < deadline, "the bot's copy never matched what was sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

/// A member types names as they read them: with spaces, in any case, or only their start; an ambiguous start
/// is refused with the candidates, and the conversation opened by name works end to end (issue 14).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_spaces_and_prefixes_open_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let (me, bot, other) =
        (IdentityKey::from_seed(&[31; 32]), IdentityKey::from_seed(&[32; 32]), IdentityKey::from_seed(&[33; 32]));
    let (server, url) =
        one_category_bubble(dir.path(), &[(&me, "Ann"), (&bot, "Echo bot (field team)"), (&other, "Echo chamber")])
            .await;
    let chat = |key: &IdentityKey, name: &str, extra: &[&str], stdin: Stdio, stdout: Stdio| {
        let key_file = dir.path().join(format!("{name}.key"));
        std::fs::write(&key_file, format!("{}\n", key.to_seed_base64().as_str())).unwrap();
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_peerbubble"))
                .args(["chat", "--rtc-bind", "127.0.0.1:0", "--url", &url, "--key"])
                .arg(&key_file)
                .args(extra)
                .stdin(stdin)
                .stdout(stdout)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _bot = chat(&bot, "bot", &["--echo"], Stdio::null(), Stdio::null());
    let mut ann = Typed::new(chat(&me, "ann", &[], Stdio::piped(), Stdio::piped()));
    ann.wait_for("connected as");
    ann.say("/open echo");
    let refusal = ann.wait_for("could be");
    assert!(refusal.contains("Echo bot (field team)") && refusal.contains("Echo chamber"), "{refusal}");
    ann.say("/open   echo BOT (field");
    ann.wait_for("conversation with Echo bot (field team) ready");
    ann.say("hello by name");
    ann.wait_for("[Echo bot (field team)] echo: hello by name");
    ann.say("/open Dan");
    ann.wait_for("nobody called \"Dan\"");
    ann.quit();
    server.shutdown().await.unwrap();
}

/// The terminal chat says when the bubble keeps a message for a contact who is away (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_chat_says_a_message_for_someone_away_is_stored_for_later() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, bob) = (IdentityKey::from_seed(&[41; 32]), IdentityKey::from_seed(&[42; 32]));
    let mailbox = peerbubble_bubble_server::MailboxConfig::at(dir.path().join("mailbox.sqlite"));
    let (server, url) = one_category_bubble_with(dir.path(), &[(&ann, "Ann"), (&bob, "Bob")], Some(mailbox)).await;
    // Bob is a native peer, online at first.
    let loopback = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    let node = Node::start(NodeConfig { bind: loopback, ..NodeConfig::new(&url) }, bob).await.unwrap();
    let key_file = dir.path().join("ann.key");
    std::fs::write(&key_file, format!("{}\n", ann.to_seed_base64().as_str())).unwrap();
    let mut chat = Typed::new(KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_peerbubble"))
            .args(["chat", "--rtc-bind", "127.0.0.1:0", "--url", &url, "--key"])
            .arg(&key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    chat.wait_for("connected as");
    chat.say("/open Bob");
    chat.wait_for("conversation with Bob ready");
    chat.say("before you go");
    // Bob leaves: the next message waits in the bubble, and the chat says so.
    node.shutdown().await.unwrap();
    until_online(&server, 1, "Bob's session to end").await;
    chat.say("for when you are back");
    let line = chat.wait_for("stored for later");
    assert!(line.contains("Bob is away"), "{line}");
    assert!(server.mailbox().unwrap().entries >= 1, "the bubble keeps it");
    chat.quit();
    server.shutdown().await.unwrap();
}

/// The native peer keeps its identity and conversations in its encrypted key store across restarts, and reads on
/// what the bubble kept for it meanwhile (issue 17); the store holds neither the key nor any message in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_native_peer_keeps_its_conversations_and_reads_what_waited() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, bot) = (IdentityKey::from_seed(&[51; 32]), IdentityKey::from_seed(&[52; 32]));
    let bot_seed = bot.to_seed_base64().as_str().to_owned();
    let mailbox = peerbubble_bubble_server::MailboxConfig::at(dir.path().join("mailbox.sqlite"));
    let (server, url) = one_category_bubble_with(dir.path(), &[(&ann, "Ann"), (&bot, "Bot")], Some(mailbox)).await;
    let key_file = dir.path().join("bot.key");
    std::fs::write(&key_file, format!("{bot_seed}\n")).unwrap();
    let store = dir.path().join("bot-store");
    let passphrase = "seven lanterns over the north gate";
    let bot_process = |import: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_peerbubble"));
        command.args(["chat", "--echo", "--rtc-bind", "127.0.0.1:0", "--url", &url, "--store"]).arg(&store);
        if import {
            command.arg("--key").arg(&key_file);
        }
        let log = std::fs::File::create(dir.path().join(if import { "bot-1.log" } else { "bot-2.log" })).unwrap();
        KillOnDrop(
            command
                .env("PEERBUBBLE_PASSPHRASE", passphrase)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let bot_id = bot.public_key().member_id();
    let mut first = bot_process(true);
    let loopback = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    let mut node =
        Node::start(NodeConfig { bind: loopback, auto_connect: false, ..NodeConfig::new(&url) }, ann).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let conversation = loop {
        let _ = node.start_direct(bot_id).await;
        if let Some(c) = node.direct(bot_id).await.unwrap() {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bot never answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    node.send_text(conversation, "first words").await.unwrap();
    let echo = |want: &'static str| move |e: &NodeEvent| matches!(e, NodeEvent::Core(Event::Message { text, .. }) if text == want);
    node.wait_for("first echo", WAIT, echo("echo: first words")).await.unwrap();

    // The bot's machine goes down hard (no goodbye); Ann writes meanwhile: the bubble keeps it.
    let _ = first.0.kill();
    let _ = first.0.wait();
    until_online(&server, 1, "the bot's session to end").await;
    node.send_text(conversation, "while you were down").await.unwrap();
    node.wait_for("stored for later", WAIT, |e| matches!(e, NodeEvent::StoredForLater(m) if *m == bot_id))
        .await
        .unwrap();

    // The bot comes back from its store alone (no key file): same conversation, reads what waited, answers.
    let _second = bot_process(false);
    if let Err(e) = node.wait_for("echo after restart", WAIT, echo("echo: while you were down")).await {
        let logs = ["bot-1.log", "bot-2.log"].map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default());
        let seen: Vec<String> = node.drain().iter().map(|e| format!("{e:?}")).collect();
        panic!("{e}: Ann saw {seen:#?}\nfirst run:\n{}\nafter the restart:\n{}", logs[0], logs[1]);
    }
    node.send_text(conversation, "and now live").await.unwrap();
    node.wait_for("live echo", WAIT, echo("echo: and now live")).await.unwrap();

    // What the store keeps is encrypted: no seed, no message.
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&store).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(!bytes.is_empty(), "the store was read");
    let text = String::from_utf8_lossy(&bytes);
    for needle in [bot_seed.as_str(), "first words", "while you were down", "echo:"] {
        assert!(!text.contains(needle), "{needle} is in the store in clear");
    }
    node.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

/// A terminal member with a key store keeps a received file encrypted (issue 17) and decrypts a copy when it
/// types `/save`: the kept file never holds the plaintext, the copy is the file sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_member_keeps_files_encrypted_and_saves_a_copy_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, bob) = (IdentityKey::from_seed(&[61; 32]), IdentityKey::from_seed(&[62; 32]));
    let (server, url) = one_category_bubble(dir.path(), &[(&ann, "Ann"), (&bob, "Bob")]).await;
    let key_file = dir.path().join("bob.key");
    std::fs::write(&key_file, format!("{}\n", bob.to_seed_base64().as_str())).unwrap();
    let downloads = dir.path().join("bob-files");
    std::fs::create_dir(&downloads).unwrap();
    let mut bob_chat = Typed::new(KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_peerbubble"))
            .args(["chat", "--rtc-bind", "127.0.0.1:0", "--url", &url, "--key"])
            .arg(&key_file)
            .arg("--store")
            .arg(dir.path().join("bob-store"))
            .arg("--download-dir")
            .arg(&downloads)
            .env("PEERBUBBLE_PASSPHRASE", "amber kites over the harbour")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    bob_chat.wait_for("connected as");

    let bob_id = bob.public_key().member_id();
    let loopback = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    let mut node = Node::start(NodeConfig { bind: loopback, ..NodeConfig::new(&url) }, ann).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.direct(bob_id).await.unwrap().is_none() {
        let _ = node.start_direct(bob_id).await;
        assert!(tokio::time::Instant::now() < deadline, "Bob never answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    node.wait_for("channel", WAIT, |e| matches!(e, NodeEvent::ChannelOpen(_))).await.unwrap();
    let canary = "CANARY-evacuation-route-B ";
    let sent = canary.repeat(20_000);
    let file = dir.path().join("route.txt");
    std::fs::write(&file, &sent).unwrap();
    node.send_file(bob_id, &file).await.unwrap();

    let line = bob_chat.wait_for("file kept encrypted in");
    let kept = downloads.join("route.txt.sealed");
    assert!(line.contains(&kept.display().to_string()), "{line}");
    let stored = std::fs::read(&kept).unwrap();
    assert!(!stored.windows(canary.len()).any(|w| w == canary.as_bytes()), "no plaintext on disk");
    let copy = dir.path().join("route-copy.txt");
    bob_chat.say(&format!("/save {} {}", kept.display(), copy.display()));
    bob_chat.wait_for("decrypted copy saved");
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), sent);
    bob_chat.say(&format!("/save {} {}", kept.display(), copy.display()));
    bob_chat.wait_for("exists");
    bob_chat.quit();
    node.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

/// Issue 17's offline scenario, with real processes: Bob and Carol (terminal members with encrypted key stores)
/// connect once, which publishes their KeyPackages, then their machines go down. Ann writes 100 messages to a
/// group with Bob, the bubble-server restarting halfway, and adds Carol — from her last-resort KeyPackage, the
/// one-time ones having been taken meanwhile. Bob returns and reads all 100 in order, then a message of the new
/// epoch; Carol returns, joins from the Welcome that waited for her, reads and answers. Nothing kept on disk by
/// the bubble holds a message in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_away_read_everything_in_order_and_one_added_while_away_joins_from_her_last_resort_key_package() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, bob, carol) =
        (IdentityKey::from_seed(&[61; 32]), IdentityKey::from_seed(&[62; 32]), IdentityKey::from_seed(&[63; 32]));
    let (bob_id, carol_id) = (bob.public_key().member_id(), carol.public_key().member_id());
    let mut yaml = String::from("bubble: cli\ncategories:\n  - {id: c}\nmembers:\n");
    for (key, name) in [(&ann, "Ann"), (&bob, "Bob"), (&carol, "Carol")] {
        yaml += &format!("  - {{public_key: {}, display_name: {name}, categories: [c]}}\n", key.public_key());
    }
    std::fs::write(dir.path().join("bubble.yaml"), yaml).unwrap();
    let mut config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        bubble_file: dir.path().join("bubble.yaml"),
        mailbox: Some(peerbubble_bubble_server::MailboxConfig::at(dir.path().join("mailbox.sqlite"))),
        // Ann writes her 100 at once.
        frames_per_second: 1000,
        frame_burst: 1000,
        member_frames_per_second: 1000,
        ..Config::default()
    };
    let start = |config: Config| async move {
        let server = Server::start(config.clone(), FileSource::new(config.bubble_file.clone(), config.reload_interval))
            .await
            .unwrap();
        server.ready().await;
        server
    };
    let server = start(config.clone()).await;
    config.listen = server.local_addr();
    let url = format!("ws://{}/v1/signal", server.local_addr());

    // A terminal member with its own encrypted store; the first run imports its key.
    let member = |name: &'static str, key: &IdentityKey, run: u32| {
        let store = dir.path().join(format!("{name}-store"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_peerbubble"));
        command.args(["chat", "--rtc-bind", "127.0.0.1:0", "--url", &url, "--store"]).arg(&store);
        if run == 1 {
            let key_file = dir.path().join(format!("{name}.key"));
            std::fs::write(&key_file, format!("{}\n", key.to_seed_base64().as_str())).unwrap();
            command.arg("--key").arg(&key_file);
        }
        let log = std::fs::File::create(dir.path().join(format!("{name}-{run}.log"))).unwrap();
        Typed::new(KillOnDrop(
            command
                .env("PEERBUBBLE_PASSPHRASE", "seven lanterns over the north gate")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .unwrap(),
        ))
    };
    let bob_1 = member("bob", &bob, 1);
    let carol_1 = member("carol", &carol, 1);
    bob_1.wait_for("connected as");
    carol_1.wait_for("connected as");
    // Each tops its stock up: four one-time KeyPackages and a last-resort one.
    let stock = 1 + peerbubble_proto::limits::KEY_PACKAGES_KEPT;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.mailbox().unwrap().key_packages != 2 * stock {
        assert!(tokio::time::Instant::now() < deadline, "KeyPackages published: {:?}", server.mailbox());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let loopback = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    let mut node = Node::start(
        NodeConfig { bind: loopback, auto_connect: false, ..NodeConfig::new(&url) },
        IdentityKey::from_seed(&[61; 32]),
    )
    .await
    .unwrap();
    let group = node.create_group("ops", &[bob_id]).await.unwrap();
    bob_1.wait_for("group ops ready");

    // Carol's one-time KeyPackages are taken meanwhile (someone adding her elsewhere; here a raw session of Ann's).
    let mut raw = peerbubble_peer::SignalClient::connect(&url, &ann).await.unwrap();
    for id in 0..peerbubble_proto::limits::KEY_PACKAGES_KEPT as u64 {
        raw.send_frame(&peerbubble_proto::ClientFrame::ClaimKeyPackage { id, member: carol_id }).await.unwrap();
        loop {
            match raw.next_timeout(WAIT).await.unwrap() {
                peerbubble_proto::ServerFrame::ClaimedKeyPackage { id: answered, key_package, .. }
                    if answered == id =>
                {
                    assert!(key_package.is_some());
                    break;
                }
                _ => {}
            }
        }
    }
    drop(raw);
    assert_eq!(server.mailbox().unwrap().key_packages, 2 * stock + 1, "Ann's and Bob's stocks and Carol's last resort");

    // Bob's and Carol's machines go down hard.
    drop(bob_1);
    drop(carol_1);
    until_online(&server, 1, "Bob and Carol away").await;

    // Ann writes 50, the bubble-server restarts (what it kept is on disk), she writes 50 more.
    let text = |n: u32| format!("sealed-canary {n:03}");
    for n in 0..50 {
        node.send_text(group, &text(n)).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.mailbox().unwrap().entries < 50 {
        assert!(tokio::time::Instant::now() < deadline, "kept: {:?}", server.mailbox());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await.unwrap();
    let server = start(config.clone()).await;
    until_online(&server, 1, "Ann back after the restart").await;
    for n in 50..100 {
        node.send_text(group, &text(n)).await.unwrap();
    }
    // Carol, away, is added from the KeyPackage the bubble keeps: her last-resort one.
    node.add_member(group, carol_id).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !node.members(group).await.unwrap().contains(&carol_id) {
        assert!(tokio::time::Instant::now() < deadline, "Carol was never added while away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.mailbox().unwrap().key_packages, 2 * stock + 1, "the last resort stays in the bubble");
    node.send_text(group, "after carol").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.mailbox().unwrap().entries < 105 {
        assert!(tokio::time::Instant::now() < deadline, "kept: {:?}", server.mailbox());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = std::fs::read(dir.path().join("mailbox.sqlite")).unwrap();
    assert!(!String::from_utf8_lossy(&kept).contains("sealed-canary"), "a message in clear in the mailbox");

    // Bob returns from his store: all 100 in order, then the message of the epoch that added Carol.
    let bob_2 = member("bob", &bob, 2);
    for n in 0..100 {
        assert_eq!(bob_2.wait_for("[Ann] "), format!("[Ann] {}", text(n)));
    }
    assert_eq!(bob_2.wait_for("[Ann] "), "[Ann] after carol");

    // Carol returns: she joins from the Welcome that waited, reads, and answers.
    let mut carol_2 = member("carol", &carol, 2);
    carol_2.wait_for("group ops ready");
    assert_eq!(carol_2.wait_for("[Ann] "), "[Ann] after carol", "Carol sees only what was said after she joined");
    carol_2.say("carol here");
    let from_carol = |e: &NodeEvent| matches!(e, NodeEvent::Core(Event::Message { from, text, .. }) if *from == carol_id && text == "carol here");
    node.wait_for("Carol's answer", WAIT, from_carol).await.unwrap();
    bob_2.wait_for("[Carol] carol here");
    node.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}
