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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_bot_answers_and_keeps_files() {
    let dir = tempfile::tempdir().unwrap();
    let (me, bot) = (IdentityKey::from_seed(&[21; 32]), IdentityKey::from_seed(&[22; 32]));
    let yaml = format!(
        "bubble: cli\ncategories:\n  - {{id: c}}\nmembers:\n  - {{public_key: {}, display_name: me, categories: [c]}}\n  - {{public_key: {}, display_name: bot, categories: [c]}}\n",
        me.public_key(),
        bot.public_key()
    );
    std::fs::write(dir.path().join("bubble.yaml"), yaml).unwrap();
    let config =
        Config { listen: ([127, 0, 0, 1], 0).into(), bubble_file: dir.path().join("bubble.yaml"), ..Config::default() };
    let server = Server::start(config.clone(), FileSource::new(config.bubble_file.clone(), config.reload_interval))
        .await
        .unwrap();
    server.ready().await;
    let url = format!("ws://{}/v1/signal", server.local_addr());
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
    assert_eq!(std::fs::read(downloads.join("orders.txt")).unwrap(), std::fs::read(&file).unwrap());
    node.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}
