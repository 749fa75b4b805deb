//! `peerbubble`: the one binary. `peerbubble up` runs the all-in-one micro-node; other subcommands run one
//! service or help a member try a bubble. It never handles a member's secrets except the key file a member
//! asks it to create or use on their own machine.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use peerbubble_bubble_server::{Config, FileSource, Server, SignalArgs};
use peerbubble_peer::SignalClient;
use peerbubble_proto::{IdentityKey, ServerFrame};

/// mimalloc: fewer cycles per allocation on the relay path than glibc's allocator (BENCHMARKS.md), and it
/// returns memory to the system more readily on a long-running micro-node.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "peerbubble", version, about = "Sovereign end-to-end-encrypted messenger: servers and tools")]
struct Cli {
    /// Log format: `text` for people, `json` for collectors.
    #[arg(long, env = "PEERBUBBLE_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// All-in-one micro-node: everything on this machine, state in one data directory.
    Up {
        /// Where state lives (the bubble file; later the embedded database).
        #[arg(long, env = "PEERBUBBLE_DATA_DIR", default_value = ".peerbubble")]
        data_dir: PathBuf,
        /// Address for signaling, health and metrics.
        #[arg(long, env = "PEERBUBBLE_LISTEN", default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
    },
    /// The bubble-server alone (signaling), as run per bubble in Kubernetes.
    BubbleServer {
        #[command(flatten)]
        args: SignalArgs,
    },
    /// Makes a member identity key (kept on the member's device) and prints its public key for the bubble file.
    Keygen {
        /// Where to write the secret key (created with owner-only permissions; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Connects to a bubble as a member and prints what the member may see: directory and presence.
    Connect {
        /// The member's key file (from `keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Signaling URL.
        #[arg(long, default_value = "ws://127.0.0.1:8480/v1/signal")]
        url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Up { data_dir, listen } => up(&data_dir, listen).await,
        Command::BubbleServer { args } => {
            let config = Config::resolve(&args)?;
            let source = FileSource::new(config.bubble_file.clone(), config.reload_interval);
            run_until_signal(Server::start(config, source).await?).await
        }
        Command::Keygen { out } => {
            let key = IdentityKey::generate()?;
            write_secret(&out, &key)?;
            let public = key.public_key();
            say(&format!("public_key: {public}\nmember_id: {}\n", public.member_id()));
            Ok(())
        }
        Command::Connect { key, url } => connect(&key, &url).await,
    }
}

fn init_logs(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for directive in peerbubble_bubble_server::LOG_REDACTIONS {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Writes to standard output (the binary's user-facing channel; logs go to standard error).
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn write_secret(path: &Path, key: &IdentityKey) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file =
        options.open(path).with_context(|| format!("cannot create key file {} (it must not exist)", path.display()))?;
    file.write_all(key.to_seed_base64().as_bytes())?;
    file.write_all(b"\n")?;
    Ok(())
}

fn read_key(path: &Path) -> anyhow::Result<IdentityKey> {
    let text = zeroize_string(
        std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    IdentityKey::from_seed_base64(&text).with_context(|| format!("{} is not a PeerBubble key file", path.display()))
}

fn zeroize_string(text: String) -> peerbubble_proto::identity::Zeroizing<String> {
    peerbubble_proto::identity::Zeroizing::new(text)
}

const DEMO_MEMBERS: [(&str, &str, &str); 3] = [
    ("alice", "Alice (field team)", "field-team"),
    ("bob", "Bob (field team)", "field-team"),
    ("carol", "Carol (command)", "command"),
];

/// First start of a micro-node: a demo bubble whose members' key files sit in `demo-keys/` — those files stand
/// for the members' own devices; the server never reads them.
fn init_demo(data_dir: &Path, bubble_file: &Path) -> anyhow::Result<()> {
    let keys_dir = data_dir.join("demo-keys");
    std::fs::create_dir_all(&keys_dir)?;
    let mut yaml = String::from(
        "# Demo bubble made by `peerbubble up`. Edit freely: the server reloads this file when it changes.\n\
         bubble: demo\ndisplay_name: Demo bubble\ncategories:\n  - id: field-team\n    display_name: Field team\n\
         \x20 - id: command\n    display_name: Command\n    sees: [field-team]\nmembers:\n",
    );
    for (name, display, category) in DEMO_MEMBERS {
        let key = IdentityKey::generate()?;
        write_secret(&keys_dir.join(format!("{name}.key")), &key)?;
        yaml += &format!(
            "  - public_key: {}\n    display_name: {display}\n    categories: [{category}]\n",
            key.public_key()
        );
    }
    std::fs::write(bubble_file, yaml)?;
    Ok(())
}

async fn up(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let bubble_file = data_dir.join("bubble.yaml");
    if !bubble_file.exists() {
        init_demo(data_dir, &bubble_file)?;
    }
    let config = Config { listen, bubble_file: bubble_file.clone(), ..Config::default() };
    let server = Server::start(config.clone(), FileSource::new(bubble_file.clone(), config.reload_interval)).await?;
    let addr = server.local_addr();
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "peerbubble".into());
    let keys = data_dir.join("demo-keys");
    say(&format!(
        "\nPeerBubble micro-node is up (data in {data}).\n\n\
         \x20 signaling   ws://{addr}/v1/signal\n\
         \x20 health      http://{addr}/healthz   http://{addr}/readyz\n\
         \x20 metrics     http://{addr}/metrics\n\
         \x20 bubble file {file} (edit it: members and categories reload live)\n\n\
         Try it: in other terminals, connect demo members and watch need-to-know at work\n\
         (Alice and Bob share the field team; Carol's command category sees the field team):\n\n\
         \x20 {exe} connect --key {keys}/alice.key --url ws://{addr}/v1/signal\n\
         \x20 {exe} connect --key {keys}/carol.key --url ws://{addr}/v1/signal\n\n\
         The admin console, invites, the web client and TURN are not built yet (see README).\n\
         Stop with Ctrl-C.\n",
        data = data_dir.display(),
        file = bubble_file.display(),
        keys = keys.display(),
    ));
    run_until_signal(server).await
}

async fn run_until_signal(server: Server) -> anyhow::Result<()> {
    wait_for_signal().await;
    tracing::info!("shutting down: telling clients to reconnect");
    server.shutdown().await?;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn connect(key: &Path, url: &str) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let mut client = SignalClient::connect(url, &key).await?;
    say(&format!("connected to bubble {:?} as {} (session {})\n", client.bubble(), client.member(), client.session()));
    let show = |client: &SignalClient| {
        let mut text = format!("directory ({} visible):\n", client.directory().len());
        for entry in client.directory().values() {
            let state = if entry.online { "online " } else { "offline" };
            text += &format!("  {state} {} [{}] {}\n", entry.display_name, entry.categories.join(", "), entry.member);
        }
        say(&text);
    };
    show(&client);
    let ping_every = std::time::Duration::from_millis(client.limits().idle_timeout_ms / 3);
    let mut ticker = tokio::time::interval(ping_every);
    ticker.tick().await;
    loop {
        tokio::select! {
            frame = client.next() => match frame? {
                ServerFrame::Presence { member, online } => {
                    let name = client.directory().get(&member).map_or_else(|| member.to_string(), |e| e.display_name.clone());
                    say(&format!("{name} is {}\n", if online { "online" } else { "offline" }));
                }
                ServerFrame::Directory { part, parts, .. } if part + 1 == parts => show(&client),
                ServerFrame::Error { code, message, .. } => say(&format!("server: {}: {message}\n", code.as_str())),
                _ => {}
            },
            _ = ticker.tick() => { client.ping().await?; }
            _ = tokio::signal::ctrl_c() => { client.close().await?; return Ok(()); }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_never_overwritten() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("me.key");
        let key = IdentityKey::generate()?;
        write_secret(&path, &key)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        }
        assert!(write_secret(&path, &IdentityKey::generate()?).is_err());
        assert_eq!(read_key(&path)?.public_key(), key.public_key());
        Ok(())
    }

    #[test]
    fn demo_bubble_holds_public_keys_only() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bubble.yaml");
        init_demo(dir.path(), &file)?;
        let yaml = std::fs::read_to_string(&file)?;
        let directory = peerbubble_bubble_server::Directory::from_yaml(yaml.as_bytes())?;
        assert_eq!(directory.len(), 3);
        for (name, _, _) in DEMO_MEMBERS {
            let key = read_key(&dir.path().join("demo-keys").join(format!("{name}.key")))?;
            assert!(yaml.contains(&key.public_key().to_string()));
            // The secret seed never appears in the server's file.
            assert!(!yaml.contains(key.to_seed_base64().as_str()));
        }
        Ok(())
    }
}
