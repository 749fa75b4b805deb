//! The micro-node's bubbles: every bubble in the store is served by its own bubble-server in this process, on its
//! own port (its own origin, so a browser keeps a separate key store per bubble), with its own TURN relay and
//! secret, offline mailbox and directory. Creating a bubble through the admin API starts its server; deleting
//! it shuts the server down (its members are disconnected) and removes its files (ADR 0026).
//!
//! The first bubble, `demo`, keeps the main listener (`--listen`) and the files at the top of the data
//! directory, where earlier versions kept them. The main listener is always served, by `demo`'s server even when
//! no such bubble exists (on a first start with OpenID Connect, or after it was deleted): it also carries the
//! console and the sign-in callback, and its server takes `demo`'s directory as soon as one is created. Every other bubble lives in `<data-dir>/bubbles/<id>/`: `port`
//! (chosen once and kept, so invite links and members' bookmarks stay valid across restarts), `turn-secret` and
//! `mailbox.sqlite`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use peerbubble_admin_api::Store;
use peerbubble_admin_api::control::{BubbleSpec, CategorySpec, ControlError, ControlFuture, ControlPlane};
use peerbubble_bubble_server::{Config, MailboxConfig, Server, ServerTls, TurnArgs};
use tokio::net::TcpListener;

use crate::store_source::{StoreSink, StoreSource};

/// The bubble served on the main listener, with its files at the top of the data directory.
pub const PRIMARY: &str = crate::DEMO_BUBBLE;

/// How often a bubble-server checks its directory for changes (one row read when nothing changed).
const DIRECTORY_INTERVAL: Duration = Duration::from_secs(1);

/// What every bubble's server shares.
pub struct Settings {
    pub data_dir: PathBuf,
    /// The main listener's address (its IP is every bubble's).
    pub listen: SocketAddr,
    pub tls: Option<ServerTls>,
    /// The main bubble's TURN settings; other bubbles take any free TURN port, without TURN over TLS.
    pub turn: TurnArgs,
    /// The main bubble's origin; others have the same scheme and host with their own port.
    pub origin: String,
}

struct Running {
    server: Server,
    reporter: tokio::task::JoinHandle<()>,
}

/// The bubbles this process serves. Cheap to clone.
#[derive(Clone)]
pub struct Bubbles(Arc<Inner>);

struct Inner {
    settings: Settings,
    /// The admin API's store, and its routes, served beside each web client (enrollment on the bubble's own
    /// origin).
    admin: std::sync::OnceLock<(Store, axum::Router)>,
    /// The main listener until the primary bubble takes it, and its address (to bind again after a restart of
    /// the primary's server).
    main_listener: std::sync::Mutex<Option<TcpListener>>,
    main_addr: SocketAddr,
    running: tokio::sync::Mutex<HashMap<String, Running>>,
    origins: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for Bubbles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bubbles").field("data_dir", &self.0.settings.data_dir).finish_non_exhaustive()
    }
}

impl Bubbles {
    pub fn new(settings: Settings, main_listener: TcpListener) -> anyhow::Result<Self> {
        let main_addr = main_listener.local_addr()?;
        Ok(Self(Arc::new(Inner {
            main_addr,
            settings,
            admin: std::sync::OnceLock::new(),
            main_listener: std::sync::Mutex::new(Some(main_listener)),
            running: tokio::sync::Mutex::new(HashMap::new()),
            origins: RwLock::new(HashMap::new()),
        })))
    }

    /// Hands over the admin API's store and routes once it runs (before any bubble starts).
    pub fn attach(&self, store: Store, routes: axum::Router) {
        let _ = self.0.admin.set((store, routes));
    }

    fn admin(&self) -> anyhow::Result<&(Store, axum::Router)> {
        self.0.admin.get().context("the admin API is not running yet")
    }

    /// Starts the main listener's server, then a server for every other bubble in the store.
    pub async fn start_all(&self) -> anyhow::Result<()> {
        self.start(PRIMARY).await?;
        for bubble in self.admin()?.0.list_bubbles().await? {
            self.start(&bubble.id).await?;
        }
        Ok(())
    }

    /// The served bubbles and their origins, by id.
    pub fn origins(&self) -> Vec<(String, String)> {
        let origins = self.0.origins.read().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<(String, String)> = origins.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        list.sort();
        list
    }

    /// The primary bubble's server (the banner describes it), if it runs.
    pub async fn with_primary<T>(&self, f: impl FnOnce(&Server) -> T) -> Option<T> {
        self.0.running.lock().await.get(PRIMARY).map(|r| f(&r.server))
    }

    fn dir_of(&self, bubble: &str) -> PathBuf {
        if bubble == PRIMARY {
            self.0.settings.data_dir.clone()
        } else {
            self.0.settings.data_dir.join("bubbles").join(bubble)
        }
    }

    /// Starts serving `bubble` (nothing if it is served already).
    pub async fn start(&self, bubble: &str) -> anyhow::Result<()> {
        let mut running = self.0.running.lock().await;
        if running.contains_key(bubble) {
            return Ok(());
        }
        let settings = &self.0.settings;
        let (store, routes) = self.admin()?.clone();
        let dir = self.dir_of(bubble);
        let (listener, turn) = if bubble == PRIMARY {
            let listener = self.0.main_listener.lock().unwrap_or_else(|p| p.into_inner()).take();
            let listener = match listener {
                Some(listener) => listener,
                None => bind(self.0.main_addr).await?,
            };
            (listener, settings.turn.clone())
        } else {
            crate::private_data_dir(&dir)?;
            let listener = self.bind_kept(&dir.join("port"), &running).await?;
            let turn = TurnArgs {
                turn_udp_port: Some(0),
                turn_tls_port: Some(0),
                turn_allow_peers: settings.turn.turn_allow_peers.clone(),
                ..TurnArgs::default()
            };
            (listener, turn)
        };
        let addr = listener.local_addr()?;
        let turn = TurnArgs { turn_secret_file: Some(crate::turn_secret_file(&dir)?), ..turn };
        let config = Config {
            listen: addr,
            turn: turn.resolve(addr)?,
            tls: settings.tls.clone(),
            // Members whose tab is closed get what was sent meanwhile when they come back.
            mailbox: Some(MailboxConfig::at(dir.join("mailbox.sqlite"))),
            ..Config::default()
        };
        let source = StoreSource::new(store.clone(), bubble.to_owned(), DIRECTORY_INTERVAL);
        let server = Server::start_with_routes(config, source, listener, routes)
            .await
            .with_context(|| format!("cannot start bubble {bubble}"))?;
        let reporter = peerbubble_bubble_server::spawn_reporter(
            server.health(),
            StoreSink::new(store, bubble.to_owned()),
            crate::REPORT_INTERVAL,
        );
        let origin =
            if bubble == PRIMARY { settings.origin.clone() } else { origin_with_port(&settings.origin, addr.port()) };
        tracing::info!(bubble, %addr, %origin, "bubble served");
        self.0.origins.write().unwrap_or_else(|p| p.into_inner()).insert(bubble.to_owned(), origin);
        running.insert(bubble.to_owned(), Running { server, reporter });
        Ok(())
    }

    /// Binds the port kept in `file`, or a new one (recorded there) for a new bubble: the next free port after
    /// the main one and the admin API's, or any free port when the main one was (tests).
    async fn bind_kept(&self, file: &Path, running: &HashMap<String, Running>) -> anyhow::Result<TcpListener> {
        let ip = self.0.settings.listen.ip();
        if let Ok(text) = std::fs::read_to_string(file) {
            let port: u16 = text.trim().parse().with_context(|| format!("{} holds no port", file.display()))?;
            return bind(SocketAddr::new(ip, port)).await;
        }
        let taken: Vec<u16> = running.values().map(|r| r.server.local_addr().port()).collect();
        let main = self.0.settings.listen.port();
        let listener = if main == 0 {
            bind(SocketAddr::new(ip, 0)).await?
        } else {
            let mut found = None;
            for port in (main.saturating_add(2)..=u16::MAX).filter(|p| !taken.contains(p)).take(200) {
                if let Ok(listener) = TcpListener::bind(SocketAddr::new(ip, port)).await {
                    found = Some(listener);
                    break;
                }
            }
            found.with_context(|| format!("no free port after {main} for a new bubble"))?
        };
        std::fs::write(file, listener.local_addr()?.port().to_string())?;
        Ok(listener)
    }

    /// Stops serving `bubble` (its members are told the server is going and disconnected) and removes its
    /// files: mailbox, TURN secret, port.
    pub async fn stop(&self, bubble: &str, remove_files: bool) -> anyhow::Result<()> {
        let removed = self.0.running.lock().await.remove(bubble);
        let origin = self.0.origins.write().unwrap_or_else(|p| p.into_inner()).remove(bubble);
        if let Some(running) = removed {
            running.reporter.abort();
            running.server.shutdown().await?;
            tracing::info!(bubble, origin = origin.unwrap_or_default(), "bubble no longer served");
        }
        if remove_files {
            if bubble == PRIMARY {
                for file in ["mailbox.sqlite", "mailbox.sqlite-wal", "mailbox.sqlite-shm"] {
                    let _ = std::fs::remove_file(self.0.settings.data_dir.join(file));
                }
            } else {
                let dir = self.dir_of(bubble);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Stops every bubble (process shutdown): members are told to reconnect later; files stay.
    pub async fn stop_all(&self) -> anyhow::Result<()> {
        let ids: Vec<String> = self.0.running.lock().await.keys().cloned().collect();
        for id in ids {
            self.stop(&id, false).await?;
        }
        Ok(())
    }

    /// The admin API's control plane for this micro-node.
    pub fn control(&self) -> Arc<dyn ControlPlane> {
        Arc::new(Control(self.clone()))
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// `scheme://host[:port][/…]` with `port` instead.
fn origin_with_port(origin: &str, port: u16) -> String {
    let (scheme, rest) = origin.split_once("://").unwrap_or(("http", origin));
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((host, after)) if !after.contains(']') => host,
        _ => authority,
    };
    format!("{scheme}://{host}:{port}")
}

/// The admin API's control plane in a micro-node: bubbles start and stop in this process.
#[derive(Debug)]
struct Control(Bubbles);

impl ControlPlane for Control {
    fn name(&self) -> &'static str {
        "micro-node"
    }

    fn bubble_created<'a>(&'a self, bubble: &'a BubbleSpec) -> ControlFuture<'a> {
        Box::pin(async move { self.0.start(&bubble.id).await.map_err(|e| ControlError(format!("{e:#}"))) })
    }

    fn category_changed<'a>(&'a self, _category: &'a CategorySpec) -> ControlFuture<'a> {
        // The bubble's server follows its directory in the store.
        Box::pin(async { Ok(()) })
    }

    fn category_deleted<'a>(&'a self, _bubble: &'a str, _id: &'a str) -> ControlFuture<'a> {
        Box::pin(async { Ok(()) })
    }

    fn bubble_deleted<'a>(&'a self, bubble: &'a str) -> ControlFuture<'a> {
        Box::pin(async move {
            self.0.stop(bubble, true).await.map_err(|e| ControlError(format!("{e:#}")))?;
            if bubble == PRIMARY {
                // The main listener keeps serving the web client and the console, with no bubble behind it.
                self.0.start(PRIMARY).await.map_err(|e| ControlError(format!("{e:#}")))?;
            }
            Ok(())
        })
    }

    fn bubble_origin(&self, bubble: &str) -> Option<String> {
        self.0.0.origins.read().unwrap_or_else(|p| p.into_inner()).get(bubble).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::origin_with_port;

    #[test]
    fn other_bubbles_share_the_scheme_and_host_with_their_own_port() {
        assert_eq!(origin_with_port("https://10.42.0.1:8480", 8482), "https://10.42.0.1:8482");
        assert_eq!(origin_with_port("http://127.0.0.1:8480/", 9000), "http://127.0.0.1:9000");
        assert_eq!(origin_with_port("https://pi.local", 8482), "https://pi.local:8482");
        assert_eq!(origin_with_port("https://[::1]:8480", 8482), "https://[::1]:8482");
        assert_eq!(origin_with_port("https://[::1]", 8482), "https://[::1]:8482");
    }
}
