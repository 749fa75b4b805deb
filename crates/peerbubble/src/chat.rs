//! `peerbubble chat`: a member's end-to-end-encrypted chat in the terminal, on the native peer (MLS, WebRTC
//! DataChannels, files). Lines typed are sent to the current conversation; lines starting with `/` are commands.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use peerbubble_client_core::contacts::find_member;
use peerbubble_client_core::message::ConversationKind;
use peerbubble_client_core::signaling::{MIN_BACKOFF_MS, UNKNOWN_MEMBER_RETRIES};
use peerbubble_client_core::{ConversationId, Event};
use peerbubble_peer::node::{Node, NodeConfig, NodeError, NodeEvent};
use peerbubble_peer::signal::ClientError;
use peerbubble_proto::MemberId;
use peerbubble_proto::{ErrorCode, IdentityKey};
use tokio::io::AsyncBufReadExt as _;

use crate::say;

const HELP: &str = "commands:
  /list                     members you may see, online or not
  /open NAME                start or switch to the 1:1 conversation with NAME
                            (a full name, its start, a word of it, or the member id)
  /group NAME MEMBER, ...   create a group chat and invite members (commas between them)
  /add MEMBER | /remove MEMBER   change the current group
  /file PATH                send a file to the current 1:1 contact
  /save KEPT DEST           decrypt a copy of a received file kept encrypted (KEPT: the .sealed file)
  /leave                    leave the current conversation (its keys are destroyed)
  /quit
  anything else             is sent to the current conversation
";

/// Settings of `peerbubble chat`.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// The member's key file (with `--store`: imported into the store once, then no longer needed).
    #[arg(long, required_unless_present = "store")]
    key: Option<PathBuf>,
    /// Keep the identity key and the conversations across restarts in this directory, encrypted under a
    /// passphrase (from `--passphrase-file`, `PEERBUBBLE_PASSPHRASE` or a prompt; never printed). Messages that
    /// waited in the bubble while this member was away are read on after a restart.
    #[arg(long)]
    store: Option<PathBuf>,
    /// File holding the key store's passphrase (its first line).
    #[arg(long, requires = "store")]
    passphrase_file: Option<PathBuf>,
    /// Signaling URL.
    #[arg(long, default_value = "ws://127.0.0.1:8480/v1/signal")]
    url: String,
    /// For `wss://` to a self-signed certificate (a micro-node's): trust exactly the certificate with this
    /// SHA-256 fingerprint, as `peerbubble up` prints it.
    #[arg(long, env = "PEERBUBBLE_PIN")]
    pin: Option<peerbubble_tls_trust::Pin>,
    /// Accept offered files into this directory. With `--store` they are kept encrypted as received
    /// (`NAME.sealed`; `/save` decrypts a copy), unless `--save-plaintext`.
    #[arg(long)]
    download_dir: Option<PathBuf>,
    /// Save received files decrypted even with `--store` (without a store they always are: nothing would keep
    /// their keys).
    #[arg(long)]
    save_plaintext: bool,
    /// Answer every message with `echo: <text>` (a bot for tests and demos).
    #[arg(long)]
    echo: bool,
    /// Use only TURN-relayed candidates (contacts never learn this host's addresses).
    #[arg(long)]
    relay_only: bool,
    /// Local UDP addresses for WebRTC, comma-separated; `0.0.0.0:0` means every non-loopback interface.
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0:0,127.0.0.1:0")]
    rtc_bind: Vec<std::net::SocketAddr>,
    /// Start a 1:1 conversation with this member (display name or id) at once.
    #[arg(long)]
    to: Option<String>,
}

/// Connects; a key the bubble does not know yet is tried again a few times, as the browser does (ADR 0016):
/// a member who just enrolled may connect before the bubble-server's directory follows the admin API.
async fn start(config: NodeConfig, args: &ChatArgs) -> anyhow::Result<Node> {
    let kept = match &args.store {
        Some(dir) => Some(crate::keep::open(dir, args.key.as_deref(), args.passphrase_file.as_deref())?),
        None => None,
    };
    let mut refusals = 0;
    loop {
        // The key is not copyable (it zeroizes on drop): read again for each attempt.
        let attempt = match (&kept, &args.key) {
            (Some((key, store)), _) => {
                let key = IdentityKey::from_seed(&key.to_seed());
                let core = crate::keep::client(&key, store)?;
                let store = store.clone();
                let saver: peerbubble_peer::node::Saver = Box::new(move |client: &peerbubble_client_core::Client| {
                    let mut store = store.lock().map_err(|_| "the key store lock is poisoned".to_owned())?;
                    client.save(&mut store).map_err(|e| e.to_string())
                });
                Node::start_with(config.clone(), key, core, Some(saver)).await
            }
            (None, Some(key_file)) => Node::start(config.clone(), crate::member::read_key(key_file)?).await,
            (None, None) => anyhow::bail!("give --key or --store"),
        };
        match attempt {
            Err(NodeError::Signal(ClientError::Refused { code: ErrorCode::UnknownMember, .. }))
                if refusals < UNKNOWN_MEMBER_RETRIES =>
            {
                refusals += 1;
                if refusals == 1 {
                    say("the bubble does not know this key yet (just enrolled?); trying again\n");
                }
                tokio::time::sleep(Duration::from_millis(MIN_BACKOFF_MS << refusals.min(4))).await;
            }
            other => return Ok(other?),
        }
    }
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let config = NodeConfig {
        download_dir: args.download_dir.clone(),
        keep_sealed: args.store.is_some() && !args.save_plaintext,
        echo: args.echo,
        relay_only: args.relay_only,
        bind: args.rtc_bind.clone(),
        trust: peerbubble_tls_trust::Trust::from_pin(args.pin),
        ..NodeConfig::new(&args.url)
    };
    let mut node = start(config, &args).await.with_context(|| format!("cannot connect to {}", args.url))?;
    say(&format!("connected as {}; /help for commands\n", node.member()));
    let mut names: HashMap<MemberId, String> = HashMap::new();
    for e in node.directory().await? {
        names.insert(e.member, e.display_name);
    }
    let mut current: Option<ConversationId> = None;
    let mut pending_direct: Option<MemberId> = None;
    if let Some(to) = &args.to {
        let peer = find(&names, to)?;
        node.start_direct(peer).await?;
        pending_direct = Some(peer);
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                None => stdin_open = false,
                Some(line) => {
                    if line.trim() == "/quit" {
                        break;
                    }
                    if let Err(e) = command(&node, &names, &mut current, &mut pending_direct, line.trim()).await {
                        say(&format!("! {e}\n"));
                    }
                }
            },
            event = node.next_event(Duration::from_secs(3600)) => {
                let Some(event) = event else { continue };
                if let NodeEvent::Core(Event::ConversationReady { conversation, kind, members }) = &event {
                    let direct_ready = *kind == ConversationKind::Direct && members.first() == pending_direct.as_ref();
                    if current.is_none() || direct_ready {
                        current = Some(*conversation);
                        pending_direct = None;
                    }
                }
                if let Some(text) = describe(&names, &event) {
                    say(&text);
                }
            },
            _ = tokio::signal::ctrl_c() => break,
        }
        if !stdin_open && !args.echo && args.download_dir.is_none() {
            break;
        }
    }
    node.shutdown().await?;
    Ok(())
}

fn find(names: &HashMap<MemberId, String>, who: &str) -> anyhow::Result<MemberId> {
    find_member(names.iter().map(|(id, name)| (*id, name.as_str())), who).map_err(|e| anyhow::anyhow!("{e} (/list)"))
}

/// Everything after the command word, as typed (names may hold spaces).
fn rest<'a>(line: &'a str, what: &str) -> anyhow::Result<&'a str> {
    let rest = line.trim().split_once(char::is_whitespace).map(|(_, rest)| rest.trim()).unwrap_or_default();
    if rest.is_empty() {
        anyhow::bail!("{what}");
    }
    Ok(rest)
}

async fn command(
    node: &Node,
    names: &HashMap<MemberId, String>,
    current: &mut Option<ConversationId>,
    pending_direct: &mut Option<MemberId>,
    line: &str,
) -> anyhow::Result<()> {
    let mut words = line.split_whitespace();
    let need_current = || current.context("no conversation yet: /open NAME or /group NAME MEMBER...");
    match words.next() {
        None => {}
        Some("/help") => say(HELP),
        Some("/list") => {
            let mut text = String::new();
            for e in node.directory().await? {
                let state = if e.online { "online " } else { "offline" };
                text += &format!("  {state} {} [{}] {}\n", e.display_name, e.categories.join(", "), e.member);
            }
            say(&text);
        }
        Some("/open") => {
            let peer = find(names, rest(line, "/open NAME")?)?;
            match node.direct(peer).await? {
                Some(c) => *current = Some(c),
                None => {
                    node.start_direct(peer).await?;
                    *pending_direct = Some(peer);
                    say("setting up an end-to-end-encrypted conversation...\n");
                }
            }
        }
        Some("/group") => {
            let usage = "/group NAME MEMBER, MEMBER...";
            let (name, members) = rest(line, usage)?.split_once(char::is_whitespace).context(usage)?;
            let members = members
                .split(',')
                .filter(|m| !m.trim().is_empty())
                .map(|m| find(names, m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            *current = Some(node.create_group(name, &members).await?);
        }
        Some("/add") => node.add_member(need_current()?, find(names, rest(line, "/add MEMBER")?)?).await?,
        Some("/remove") => node.remove_member(need_current()?, find(names, rest(line, "/remove MEMBER")?)?).await?,
        Some("/leave") => {
            node.leave(need_current()?).await?;
            *current = None;
        }
        Some("/file") => {
            let path = PathBuf::from(rest(line, "/file PATH")?);
            let members = node.members(need_current()?).await?;
            let [peer] = members.as_slice() else { anyhow::bail!("files go to a 1:1 contact: /open NAME first") };
            node.send_file(*peer, &path).await?;
        }
        Some("/save") => {
            let usage = "/save KEPT DEST";
            let (kept, dest) = rest(line, usage)?.split_once(' ').context(usage)?;
            let bytes = node.save_file(kept.trim().as_ref(), dest.trim().as_ref()).await?;
            say(&format!("* decrypted copy saved to {} ({bytes} bytes, SHA-256 checked)\n", dest.trim()));
        }
        Some(other) if other.starts_with('/') => anyhow::bail!("unknown command {other}; /help"),
        Some(_) => {
            node.send_text(need_current()?, line).await?;
        }
    }
    Ok(())
}

fn describe(names: &HashMap<MemberId, String>, event: &NodeEvent) -> Option<String> {
    let name = |m: &MemberId| names.get(m).cloned().unwrap_or_else(|| m.to_string());
    Some(match event {
        NodeEvent::Core(Event::Message { from, text, .. }) => format!("[{}] {text}\n", name(from)),
        NodeEvent::Core(Event::ConversationReady { kind, members, .. }) => {
            let who: Vec<_> = members.iter().map(name).collect();
            match kind {
                ConversationKind::Direct => format!("* conversation with {} ready (MLS)\n", who.join(", ")),
                ConversationKind::Group { name } => format!("* group {name} ready: {}\n", who.join(", ")),
            }
        }
        NodeEvent::Core(Event::MembersChanged { members, .. }) => {
            format!("* members now: {}\n", members.iter().map(name).collect::<Vec<_>>().join(", "))
        }
        NodeEvent::Core(Event::ConversationClosed { reason, .. }) => format!("* conversation closed ({reason:?})\n"),
        NodeEvent::Core(Event::FileOffered { from, offer, .. }) => {
            format!("* {} offers {} ({} bytes)\n", name(from), offer.name, offer.size)
        }
        NodeEvent::Core(Event::FileSent { .. }) => "* file delivered and verified\n".into(),
        NodeEvent::Core(Event::Refused { from, reason }) => format!("! refused from {}: {reason}\n", name(from)),
        NodeEvent::FileSaved { path, .. } => format!("* file saved to {}\n", path.display()),
        NodeEvent::FileKept { path, .. } => {
            format!("* file kept encrypted in {0}; /save {0} DEST decrypts a copy\n", path.display())
        }
        NodeEvent::ChannelOpen(m) => format!("* direct connection with {} (DTLS fingerprint verified)\n", name(m)),
        NodeEvent::ChannelClosed(m) => format!("* direct connection with {} closed; using the relay\n", name(m)),
        NodeEvent::SignalingDown => "* signaling lost; reconnecting\n".into(),
        NodeEvent::SignalingUp => "* signaling back\n".into(),
        NodeEvent::StoredForLater(m) => {
            format!("* {} is away: stored for later, delivered when they are back\n", name(m))
        }
        NodeEvent::MissedWhileAway(n) => {
            format!("! {n} message(s) sent to you expired in the bubble before you came back; groups re-add you\n")
        }
        NodeEvent::Error(e) => format!("! {e}\n"),
        _ => return None,
    })
}
