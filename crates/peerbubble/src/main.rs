//! `peerbubble`: the one binary. `peerbubble up` runs the all-in-one micro-node (admin API + bubble-server on an
//! embedded SQLite database); other subcommands run one service, or do what a member or an administrator does
//! from a terminal. Member secrets exist only in key files a member creates on their own machine.
//!
//! The member tools (`enroll`, `keygen`, `connect`, `chat`) sit behind the default `member` feature: built
//! without it (`--no-default-features`, as the server image and the Debian package are), the binary links
//! neither the MLS nor the WebRTC stack it would never use on a server (ADR 0025).

#![forbid(unsafe_code)]

mod admin;
mod bubbles;
#[cfg(feature = "member")]
mod chat;
#[cfg(feature = "member")]
mod keep;
#[cfg(feature = "member")]
mod member;
mod store_source;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use peerbubble_bubble_server::{
    AdminApiReporter, AdminApiSource, BubbleCredential, Config, FileSource, Server, SignalArgs, TurnArgs,
};
use peerbubble_tls_trust::{Pin, Trust};
use serde_json::json;

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
    /// All-in-one micro-node: admin API and bubble-server on an embedded database, state in one directory.
    Up {
        /// Where state lives (the SQLite database).
        #[arg(long, env = "PEERBUBBLE_DATA_DIR", default_value = ".peerbubble")]
        data_dir: PathBuf,
        /// Address for signaling, health and metrics.
        #[arg(long, env = "PEERBUBBLE_LISTEN", default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
        /// UDP and TCP port of the embedded TURN relay (0 for any free port).
        #[arg(long, env = "PEERBUBBLE_TURN_UDP_PORT", default_value_t = 3478)]
        turn_port: u16,
        /// TURN-over-TLS port, with a self-signed certificate (0 for none).
        #[arg(long, env = "PEERBUBBLE_TURN_TLS_PORT", default_value_t = 5349)]
        turn_tls_port: u16,
        /// Addresses the TURN relay may send to although special (private, loopback), as CIDRs (repeat the
        /// flag): on a LAN without Internet, members' own network (e.g. 192.168.0.0/16). Refused by default.
        #[arg(long = "turn-allow-peer", env = "PEERBUBBLE_TURN_ALLOW_PEERS", value_delimiter = ',')]
        turn_allow_peers: Vec<String>,
        #[command(flatten)]
        tls: UpTls,
        #[command(flatten)]
        admin: admin::AdminArgs,
    },
    /// The bubble-server alone (signaling and TURN), as run per bubble in Kubernetes.
    BubbleServer {
        #[command(flatten)]
        args: Box<SignalArgs>,
    },
    /// The admin API alone.
    AdminApi {
        /// Where the default SQLite database lives.
        #[arg(long, env = "PEERBUBBLE_DATA_DIR", default_value = ".peerbubble")]
        data_dir: PathBuf,
        #[command(flatten)]
        admin: admin::AdminArgs,
    },
    /// Administrator: makes a one-time invite and prints its link.
    Invite {
        /// Admin API address.
        #[arg(long, default_value = "http://127.0.0.1:8481")]
        api: String,
        /// Admin token (printed by `peerbubble up` or `peerbubble admin-api`).
        #[arg(long, env = "PEERBUBBLE_ADMIN_TOKEN")]
        token: String,
        /// Bubble.
        #[arg(long, default_value = "demo")]
        bubble: String,
        /// Name of the person invited.
        #[arg(long)]
        name: String,
        /// Categories granted (repeat the flag).
        #[arg(long = "category")]
        categories: Vec<String>,
        /// Also print the link as a QR code, to scan from a phone.
        #[arg(long)]
        qr: bool,
        /// For an HTTPS admin API with a self-signed certificate (a micro-node's): trust exactly the certificate
        /// with this SHA-256 fingerprint, as `peerbubble up` prints it.
        #[arg(long, env = "PEERBUBBLE_PIN")]
        pin: Option<Pin>,
    },
    /// Member: makes an identity key on this machine and enrolls it with an invite link.
    #[cfg(feature = "member")]
    Enroll {
        /// Admin API address.
        #[arg(long, default_value = "http://127.0.0.1:8481")]
        api: String,
        /// The invite link (`…/enroll#<bubble>.<token>`).
        #[arg(long)]
        invite: String,
        /// Where to keep the new secret key in clear (created with owner-only permissions). Prefer `--store`.
        #[arg(long, required_unless_present = "store", conflicts_with = "store")]
        key_out: Option<PathBuf>,
        /// Keep the new key in an encrypted key store instead (a new directory, which `chat --store` opens): the
        /// key is never written in clear. Its passphrase comes from `--passphrase-file`, `PEERBUBBLE_PASSPHRASE`
        /// or a prompt, and is asked before the invite is used.
        #[arg(long)]
        store: Option<PathBuf>,
        /// With `--store`: a file holding the key store's passphrase.
        #[arg(long, requires = "store")]
        passphrase_file: Option<PathBuf>,
        /// For an HTTPS admin API with a self-signed certificate (a micro-node's): trust exactly the certificate
        /// with this SHA-256 fingerprint, as `peerbubble up` prints it.
        #[arg(long, env = "PEERBUBBLE_PIN")]
        pin: Option<Pin>,
    },
    /// Makes a member identity key and prints its public key (for a hand-written bubble file).
    #[cfg(feature = "member")]
    Keygen {
        /// Where to write the secret key (created with owner-only permissions; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks that a URL answers 200 (container health checks and `helm test`; the images carry no curl).
    Probe {
        /// The URL, e.g. http://127.0.0.1:8481/readyz.
        url: String,
    },
    /// Member: end-to-end-encrypted chat and files with the members you may see (MLS over WebRTC).
    #[cfg(feature = "member")]
    Chat {
        #[command(flatten)]
        args: chat::ChatArgs,
    },
    /// Member: connects to a bubble and prints what the member may see: directory and presence.
    #[cfg(feature = "member")]
    Connect {
        /// The member's key file.
        #[arg(long)]
        key: PathBuf,
        /// Signaling URL.
        #[arg(long, default_value = "ws://127.0.0.1:8480/v1/signal")]
        url: String,
        /// For `wss://` to a self-signed certificate (a micro-node's): trust exactly the certificate with this
        /// SHA-256 fingerprint, as `peerbubble up` prints it.
        #[arg(long, env = "PEERBUBBLE_PIN")]
        pin: Option<Pin>,
    },
}

/// HTTPS for `peerbubble up`: browsers on other machines grant WebCrypto, Web Locks and WebAuthn only to
/// secure contexts, so a micro-node listening beyond loopback serves HTTPS unless told otherwise.
#[derive(Debug, Clone, clap::Args)]
struct UpTls {
    /// Serve HTTPS with a self-signed certificate made once and kept in <data-dir>/tls (the default when
    /// listening on an address other than loopback).
    #[arg(long, env = "PEERBUBBLE_TLS", conflicts_with = "plain_http")]
    tls: bool,
    /// Serve HTTPS with this certificate chain (PEM) instead of a self-signed one.
    #[arg(long, env = "PEERBUBBLE_TLS_CERT", requires = "tls_key", conflicts_with = "plain_http")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "PEERBUBBLE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A further name or address the self-signed certificate is made for (repeat the flag), e.g. the
    /// machine's LAN address. Used when the certificate is made (delete <data-dir>/tls to make it again).
    #[arg(long = "tls-name", env = "PEERBUBBLE_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// Serve plain HTTP even beyond loopback (behind a reverse proxy that terminates TLS).
    #[arg(long, env = "PEERBUBBLE_PLAIN_HTTP")]
    plain_http: bool,
}

impl UpTls {
    /// The certificate to serve with, or none for plain HTTP.
    fn source(&self, data_dir: &Path, listen: SocketAddr) -> Option<peerbubble_bubble_server::TlsSource> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            return Some(peerbubble_bubble_server::TlsSource::Files { cert: cert.clone(), key: key.clone() });
        }
        if self.plain_http || (!self.tls && listen.ip().is_loopback()) {
            return None;
        }
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
            names.push(listen.ip().to_string());
        }
        if let Some(host) = machine_name() {
            names.push(format!("{host}.local"));
            names.push(host);
        }
        names.extend(self.tls_names.iter().cloned());
        names.sort();
        names.dedup();
        Some(peerbubble_bubble_server::TlsSource::Kept { dir: data_dir.join("tls"), names })
    }
}

/// This machine's host name, when it is a usable DNS label (what `<name>.local` resolves to over mDNS on a
/// LAN, as on a Raspberry Pi).
fn machine_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    let label = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (name.split('.').all(label) && name != "localhost").then_some(name)
}

/// The address members open: the listen address, or for an unspecified one (`0.0.0.0`) the machine's mDNS name.
fn public_origin(scheme: &str, listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        let host = machine_name().map_or_else(|| "localhost".to_owned(), |h| format!("{h}.local"));
        return format!("{scheme}://{host}:{}", listen.port());
    }
    format!("{scheme}://{listen}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Up { data_dir, listen, turn_port, turn_tls_port, turn_allow_peers, tls, admin } => {
            let turn = TurnArgs {
                turn_udp_port: Some(turn_port),
                turn_tls_port: Some(turn_tls_port),
                turn_allow_peers,
                ..TurnArgs::default()
            };
            up(&data_dir, listen, turn, &tls, &admin).await
        }
        Command::BubbleServer { args } => bubble_server(&args).await,
        Command::AdminApi { data_dir, admin } => {
            let stop = StopSignals::listen();
            private_data_dir(&data_dir)?;
            let running =
                admin::start(&admin, sqlite_url(&data_dir), format!("http://{}", admin.admin_listen), None, None)
                    .await?;
            say(&format!(
                "admin API on http://{}\n{}\n",
                running.addr,
                sign_in_hint(&running, &format!("http://{}", running.addr))
            ));
            stop.wait().await;
            Ok(())
        }
        Command::Probe { url } => probe(&url).await,
        Command::Invite { api, token, bubble, name, categories, qr, pin } => {
            let link = make_invite(&api, pin, &token, &bubble, &name, &categories).await?;
            if qr {
                say(&terminal_qr(&link)?);
            }
            say(&format!("{link}\n"));
            Ok(())
        }
        #[cfg(feature = "member")]
        Command::Enroll { api, invite, key_out, store, passphrase_file, pin } => {
            let keep_in = match (key_out, store) {
                (_, Some(dir)) => member::KeepKey::Store(keep::prepare(&dir, passphrase_file.as_deref())?, dir),
                (Some(file), None) => member::KeepKey::File(file),
                (None, None) => anyhow::bail!("give --store <dir> (or --key-out <file>)"),
            };
            member::enroll(&api, pin, &invite, keep_in).await
        }
        #[cfg(feature = "member")]
        Command::Keygen { out } => {
            let key = peerbubble_proto::IdentityKey::generate()?;
            member::write_secret(&out, &key)?;
            let public = key.public_key();
            say(&format!("public_key: {public}\nmember_id: {}\n", public.member_id()));
            Ok(())
        }
        #[cfg(feature = "member")]
        Command::Connect { key, url, pin } => member::connect(&key, &url, pin).await,
        #[cfg(feature = "member")]
        Command::Chat { args } => chat::chat(args).await,
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
pub(crate) fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("admin.db").display())
}

async fn bubble_server(args: &SignalArgs) -> anyhow::Result<()> {
    let stop = StopSignals::listen();
    let config = Config::resolve(args)?;
    let proof = args.bubble_token_file.as_ref().or(args.bubble_credential_file.as_ref());
    let server = match (&args.admin_api_url, &args.bubble, proof) {
        (Some(url), Some(bubble), Some(file)) => {
            // Read now to fail at start on a missing file; then again at every request (rotation).
            let credential = BubbleCredential::from_file(file.clone());
            credential.bearer().await.map_err(|e| anyhow::anyhow!(e))?;
            let mut source = AdminApiSource::new(url, bubble, credential.clone(), Duration::from_secs(1))?;
            if let Some(policy) = &args.policy_file {
                source = source.with_policy_file(policy.clone());
            }
            // The browser client enrolls on the bubble's own origin, where it then signals.
            let routes = peerbubble_bubble_server::enroll_forwarding(url, bubble).map_err(|e| anyhow::anyhow!(e))?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
            let server = Server::start_with_routes(config, source, listener, routes).await?;
            // Health samples and session events reach the console from every bubble-server the operator runs,
            // not only from `up`.
            let interval = args.health_interval_ms.map_or(REPORT_INTERVAL, Duration::from_millis);
            let reporter = AdminApiReporter::new(url, bubble, credential);
            peerbubble_bubble_server::spawn_reporter(server.health(), reporter, interval);
            server
        }
        _ => {
            let source = FileSource::new(config.bubble_file.clone(), config.reload_interval);
            Server::start(config, source).await?
        }
    };
    stop.wait().await;
    tracing::info!("shutting down: telling clients to reconnect");
    server.shutdown().await?;
    Ok(())
}

/// POSTs JSON to the admin API at `api`; a refusal becomes an error carrying the API's own explanation.
/// POSTs `body` to the admin API at `api`; over HTTPS the system's authorities are trusted, or exactly the
/// certificate `pin` names.
pub(crate) async fn api_post(
    api: &str,
    pin: Option<Pin>,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let client = match pin {
        Some(pin) => reqwest::Client::builder()
            .use_preconfigured_tls(peerbubble_tls_trust::client_config(Trust::Pinned(pin))?)
            .build()?,
        None => reqwest::Client::new(),
    };
    let mut request = client.post(format!("{}{path}", api.trim_end_matches('/'))).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| {
        // rustls's reason is at the bottom of the chain; a self-signed micro-node needs its pin.
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            why = inner.to_string();
            source = inner.source();
        }
        if let Some(refused) = peerbubble_tls_trust::not_pinned(&e) {
            why = refused.to_string();
        }
        let hint = if api.starts_with("https://") && pin.is_none() {
            "\n(a micro-node's self-signed certificate: pass --pin with the SHA-256 fingerprint `peerbubble up` prints)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot reach the admin API at {api}: {why}{hint}")
    })?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{what} refused ({status}): {}", answer["message"].as_str().unwrap_or("no reason given"));
    }
    Ok(answer)
}

async fn make_invite(
    api: &str,
    pin: Option<Pin>,
    token: &str,
    bubble: &str,
    name: &str,
    categories: &[String],
) -> anyhow::Result<String> {
    let body = json!({"display_name": name, "categories": categories});
    let answer = api_post(api, pin, &format!("/api/v1/bubbles/{bubble}/invites"), Some(token), &body, "invite").await?;
    answer["link"].as_str().map(str::to_owned).context("the admin API returned no link")
}

const DEMO_BUBBLE: &str = "demo";
/// How often bubble-servers report health and session events.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);
const DEMO_MEMBERS: [(&str, &str, &str); 3] = [
    ("alice", "Alice (field team)", "field-team"),
    ("bob", "Bob (field team)", "field-team"),
    ("carol", "Carol (command)", "command"),
];

/// Makes the data directory its owner's alone: it holds the admin database (the directory, invites, audit), the
/// offline mailbox, the TURN secret and the TLS key. The directory is 0700 and everything in it 0600 (0700 for
/// directories), including what an earlier version left more open, and the process's umask makes whatever it
/// creates later (databases, their journals, certificates) the same.
fn private_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let mut pending = vec![data_dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private", dir.display()))?;
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() {
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))
                        .with_context(|| format!("cannot make {} private", entry.path().display()))?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    Ok(())
}

/// The micro-node's TURN secret: made once, kept in the data directory, readable by its owner only.
fn turn_secret_file(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("turn-secret");
    if !path.exists() {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *secret).map_err(|e| anyhow::anyhow!("no randomness for the TURN secret: {e}"))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).with_context(|| format!("cannot create {}", path.display()))?;
        std::io::Write::write_all(&mut file, &*secret)?;
    }
    Ok(path)
}

async fn up(
    data_dir: &Path,
    listen: SocketAddr,
    turn: TurnArgs,
    tls_args: &UpTls,
    admin_args: &admin::AdminArgs,
) -> anyhow::Result<()> {
    let stop = StopSignals::listen();
    private_data_dir(data_dir)?;
    let tls = match tls_args.source(data_dir, listen) {
        Some(source) => Some(peerbubble_bubble_server::ServerTls::load(&source, &[b"http/1.1"])?),
        None => None,
    };
    let (http, ws) = if tls.is_some() { ("https", "wss") } else { ("http", "ws") };
    // Bound first: invite links name the address the web client is really served on (port 0 picks one).
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let web_addr = listener.local_addr()?;
    let origin = admin_args.public_url.clone().unwrap_or_else(|| public_origin(http, web_addr));
    let turn = TurnArgs { turn_secret_file: Some(turn_secret_file(data_dir)?), ..turn };
    let settings =
        bubbles::Settings { data_dir: data_dir.to_path_buf(), listen, tls: tls.clone(), turn, origin: origin.clone() };
    let bubbles = bubbles::Bubbles::new(settings, listener)?;
    let admin =
        admin::start(admin_args, sqlite_url(data_dir), origin.clone(), Some(&origin), Some(bubbles.control())).await?;
    bubbles.attach(admin.store.clone(), admin.router.clone());
    let api = format!("http://{}", admin.addr);
    // First start (an empty database): a demo bubble made through the admin API itself, with one invite per demo
    // member. A bubble created this way starts serving at once; so do those the console creates later.
    let mut invites = Vec::new();
    if let Some(token) = admin.bootstrap_token.as_ref()
        && admin.store.list_bubbles().await?.is_empty()
    {
        api_post(
            &api,
            None,
            "/api/v1/bubbles",
            Some(token),
            &json!({"id": DEMO_BUBBLE, "display_name": "Demo bubble"}),
            "demo setup",
        )
        .await?;
        for category in [
            json!({"id": "field-team", "display_name": "Field team"}),
            json!({"id": "command", "display_name": "Command", "sees": ["field-team"]}),
        ] {
            api_post(&api, None, "/api/v1/bubbles/demo/categories", Some(token), &category, "demo setup").await?;
        }
        for (file, name, category) in DEMO_MEMBERS {
            invites.push((file, make_invite(&api, None, token, DEMO_BUBBLE, name, &[category.to_owned()]).await?));
        }
    }
    bubbles.start_all().await?;
    let (addr, turn_line) = bubbles
        .with_primary(|server| (server.local_addr(), turn_banner(server)))
        .await
        .context("the main bubble-server did not start")?;
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "peerbubble".into());
    let host = origin.split_once("://").map_or(origin.as_str(), |(_, h)| h).trim_end_matches('/');
    let mut text = format!(
        "\nPeerBubble micro-node is up (data in {data}).\n\n\
         \x20 web client  {origin}/   {web}\n\
         \x20 signaling   {ws}://{host}/v1/signal\n\
         \x20 console     {origin}/admin/   {console}\n\
         \x20 admin API   {api}   (reference: {api}/api/v1/reference)\n\
         \x20 {sign_in}\n\
         \x20 health      {http}://{addr}/healthz   {http}://{addr}/readyz\n\
         \x20 metrics     {http}://{addr}/metrics\n\
         \x20 TURN        {turn}\n\n",
        origin = origin.trim_end_matches('/'),
        data = data_dir.display(),
        web = if peerbubble_web_assets::is_built() {
            ""
        } else {
            "(not built into this binary: cargo xtask run builds it)"
        },
        console = if !peerbubble_web_assets::console_is_built() {
            "(not built into this binary: cargo xtask run builds it)"
        } else if admin.oidc {
            "(sign in with your organisation account)"
        } else {
            "(sign in with the admin token below)"
        },
        sign_in = sign_in_hint(&admin, &origin),
        turn = turn_line,
    );
    text += &bubbles_banner(&bubbles);
    if let Some(tls) = &tls {
        text += &format!(
            "HTTPS certificate{made} — SHA-256 fingerprint:\n  {fingerprint}\n\
             A browser warns about a self-signed certificate once: compare this fingerprint with the one it shows\n\
             (click the warning, then the certificate) before going on. Scan to open the web client:\n{qr}\n",
            made = if tls.made() { " (new)" } else { "" },
            fingerprint = tls.fingerprint_hex(),
            qr = terminal_qr(&format!("{}/", origin.trim_end_matches('/')))?,
        );
    } else if !listen.ip().is_loopback() {
        text += "Plain HTTP beyond loopback: browsers refuse the web client's cryptography unless a proxy in front\n\
                 terminates TLS.\n\n";
    }
    if invites.is_empty() && admin.oidc {
        text += "Administrators sign in to the console with the organisation's identity provider; create bubbles\n\
                 and invites there (this micro-node makes no demo bubble without its bootstrap token).\n\n";
    } else if invites.is_empty() {
        let token = admin.bootstrap_token.as_deref().unwrap_or("<an API token>");
        text += &format!(
            "Invite someone to the demo bubble:\n  {exe} invite --api {api} --token {token} --name \"Dan\" --category field-team\n\n",
        );
    } else {
        text += "Try it: open two of these invite links in two browsers (or a normal and a private window); each\n\
                 enrolls a demo member whose keys are made in that browser. Alice and Bob share the field team;\n\
                 Command sees it. Each link works once.\n\n";
        for (file, link) in &invites {
            text += &format!("  {file:<6} {link}\n");
        }
        // The terminal member tools exist only in builds with them (not in the server image or package).
        if cfg!(feature = "member") {
            // Over HTTPS from any machine, trusting exactly this certificate (its pin); in the clear on this one.
            let (enroll_api, pin) = match &tls {
                Some(tls) => (origin.trim_end_matches('/').to_owned(), format!(" --pin {}", tls.fingerprint_hex())),
                None => (api.clone(), String::new()),
            };
            text += "\nOr enroll from a terminal instead (then the link is used up):\n";
            for (file, link) in invites.iter().take(1) {
                text += &format!("  {exe} enroll --api {enroll_api}{pin} --invite '{link}' --key-out {file}.key\n");
            }
            text += &format!("\n  {exe} chat --key alice.key --url {ws}://{host}/v1/signal{pin}\n");
        }
        text += "\nThe invites are single-use; make more with `peerbubble invite`.\n";
    }
    text += "Stop with Ctrl-C.\n";
    say(&text);
    stop.wait().await;
    tracing::info!("shutting down: telling clients to reconnect");
    bubbles.stop_all().await
}

/// The bubbles other than the demo, each on its own port (nothing when there are none).
fn bubbles_banner(bubbles: &bubbles::Bubbles) -> String {
    let others: Vec<(String, String)> =
        bubbles.origins().into_iter().filter(|(id, _)| id != bubbles::PRIMARY).collect();
    if others.is_empty() {
        return String::new();
    }
    let mut text = "Other bubbles, each with its own web client, signaling and TURN:\n".to_owned();
    for (id, origin) in others {
        text += &format!("  {id:<12} {origin}/\n");
    }
    text + "\n"
}

fn turn_banner(server: &Server) -> String {
    let Some(turn) = server.turn() else { return "off".to_owned() };
    let mut parts: Vec<String> = turn.udp_addrs().iter().map(|a| format!("udp+tcp {a}")).collect();
    parts.extend(turn.tls_addrs().iter().map(|a| format!("tls {a}")));
    parts.join("   ")
}

/// The link as a QR code drawn with half-block characters (dark on light, with its quiet zone).
fn terminal_qr(link: &str) -> anyhow::Result<String> {
    let code = qrcode::QrCode::with_error_correction_level(link.as_bytes(), qrcode::EcLevel::M)?;
    let mut art = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build();
    art.push('\n');
    Ok(art)
}

fn sign_in_hint(admin: &admin::RunningAdmin, origin: &str) -> String {
    match &admin.bootstrap_token {
        Some(token) => format!("admin token {token}   (valid until restart)"),
        None => format!("admin sign-in {}/admin/   (OpenID Connect)", origin.trim_end_matches('/')),
    }
}

/// SIGTERM and SIGINT, listened for from the moment this is made: made before a server says it is up (its banner,
/// its "listening" line), so that a stop asked right after that shuts it down cleanly instead of meeting the
/// default action, which kills the process on the spot.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self { term: signal(SignalKind::terminate()).ok(), interrupt: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let (Some(mut term), Some(mut interrupt)) = (self.term, self.interrupt) {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn probe(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let response = client.get(url).send().await.with_context(|| format!("{url} does not answer"))?;
    anyhow::ensure!(response.status().is_success(), "{url} answered {}", response.status());
    say(&format!("{url}: {}\n", response.status()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(tls: bool, plain_http: bool, names: &[&str]) -> UpTls {
        UpTls {
            tls,
            tls_cert: None,
            tls_key: None,
            tls_names: names.iter().map(|n| (*n).to_owned()).collect(),
            plain_http,
        }
    }

    fn kept_names(source: Option<peerbubble_bubble_server::TlsSource>) -> Vec<String> {
        match source {
            Some(peerbubble_bubble_server::TlsSource::Kept { names, .. }) => names,
            other => panic!("expected a kept self-signed certificate, got {other:?}"),
        }
    }

    #[test]
    fn https_is_the_default_beyond_loopback_only() {
        let data = Path::new("/nonexistent");
        let at = |addr: &str| addr.parse::<SocketAddr>().unwrap();
        // Loopback stays plain HTTP for development, unless asked.
        assert!(tls(false, false, &[]).source(data, at("127.0.0.1:8480")).is_none());
        assert!(kept_names(tls(true, false, &[]).source(data, at("127.0.0.1:8480"))).contains(&"localhost".to_owned()));
        // A LAN address or every interface: HTTPS by itself, for the address it listens on and the names given.
        let lan = kept_names(tls(false, false, &["pi.lan", "localhost"]).source(data, at("192.168.1.5:8480")));
        assert!(lan.contains(&"192.168.1.5".to_owned()) && lan.contains(&"pi.lan".to_owned()), "{lan:?}");
        assert_eq!(lan.iter().filter(|n| *n == "localhost").count(), 1, "{lan:?}");
        assert!(kept_names(tls(false, false, &[]).source(data, at("0.0.0.0:8480"))).contains(&"::1".to_owned()));
        // Behind a proxy that terminates TLS.
        assert!(tls(false, true, &[]).source(data, at("0.0.0.0:8480")).is_none());
    }
}
