//! Bubble-server configuration: one typed struct, from flags, environment (`PEERBUBBLE_*`) and an optional
//! YAML file, in that order of precedence. Every default is here and works on a laptop.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use peerbubble_proto::Limits;
use peerbubble_proto::limits::MAX_FRAME_BYTES;
use peerbubble_turn::credentials::TurnSecret;
use peerbubble_turn::peer::Cidr;
use serde::Deserialize;

use crate::turn::{TlsSource, TurnConfig};

/// Errors reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The YAML file is not valid (unknown keys are refused).
    #[error("invalid configuration file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Command-line flags and environment variables. Unset values fall back to the YAML file, then to defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SignalArgs {
    /// YAML configuration file (keys as in `Config`, snake_case).
    #[arg(long = "config", env = "PEERBUBBLE_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Address to listen on for signaling, health and metrics.
    #[arg(long, env = "PEERBUBBLE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The bubble file (YAML: bubble, categories, members), reloaded when it changes.
    #[arg(long, env = "PEERBUBBLE_BUBBLE_FILE")]
    pub bubble_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for HTTPS and `wss://` on the signaling listener, e.g. a mounted
    /// kubernetes.io/tls Secret; read again when it changes (a renewal needs no restart). Without it the listener
    /// speaks plain HTTP (loopback, or behind an Ingress that terminates TLS).
    #[arg(long, env = "PEERBUBBLE_SIGNAL_TLS_CERT", requires = "signal_tls_key")]
    pub signal_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--signal-tls-cert`.
    #[arg(long, env = "PEERBUBBLE_SIGNAL_TLS_KEY", requires = "signal_tls_cert")]
    pub signal_tls_key: Option<PathBuf>,
    /// Largest frame accepted, in bytes (at most 65536).
    #[arg(long, env = "PEERBUBBLE_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u32>,
    /// Sustained frames per second per connection.
    #[arg(long, env = "PEERBUBBLE_FRAMES_PER_SECOND")]
    pub frames_per_second: Option<u32>,
    /// Burst of frames per connection above the sustained rate.
    #[arg(long, env = "PEERBUBBLE_FRAME_BURST")]
    pub frame_burst: Option<u32>,
    /// Sustained frames per second per member, across its sessions.
    #[arg(long, env = "PEERBUBBLE_MEMBER_FRAMES_PER_SECOND")]
    pub member_frames_per_second: Option<u32>,
    /// Simultaneous sessions per member.
    #[arg(long, env = "PEERBUBBLE_MAX_SESSIONS_PER_MEMBER")]
    pub max_sessions_per_member: Option<u32>,
    /// Seconds without any frame from a client before its session is closed.
    #[arg(long, env = "PEERBUBBLE_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a client has to answer the challenge.
    #[arg(long, env = "PEERBUBBLE_CHALLENGE_TTL_SECS")]
    pub challenge_ttl_secs: Option<u64>,
    /// Bytes that may wait to be written to one session before it counts as a slow reader.
    #[arg(long, env = "PEERBUBBLE_SEND_QUEUE_BYTES")]
    pub send_queue_bytes: Option<usize>,
    /// Most WebSocket connections open at once (authenticated or not).
    #[arg(long, env = "PEERBUBBLE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How often the bubble file is checked for changes, in milliseconds.
    #[arg(long, env = "PEERBUBBLE_RELOAD_INTERVAL_MS")]
    pub reload_interval_ms: Option<u64>,
    /// MLS groups whose commit order is remembered; past it, the least recently committed group is forgotten.
    #[arg(long, env = "PEERBUBBLE_MAX_GROUPS")]
    pub max_groups: Option<usize>,
    /// Follow the directory from this admin API (e.g. `http://admin-api:8481`) instead of a bubble file.
    #[arg(long, env = "PEERBUBBLE_ADMIN_API_URL", requires = "bubble", requires = "admin_api_proof")]
    pub admin_api_url: Option<String>,
    /// The bubble this server serves (with `--admin-api-url`).
    #[arg(long, env = "PEERBUBBLE_BUBBLE")]
    pub bubble: Option<String>,
    /// File holding the bubble's admin-API credential (a mounted Secret in Kubernetes).
    #[arg(long, env = "PEERBUBBLE_BUBBLE_CREDENTIAL_FILE", group = "admin_api_proof")]
    pub bubble_credential_file: Option<PathBuf>,
    /// File holding the pod's projected ServiceAccount token for the admin API, instead of a credential (in
    /// Kubernetes, when the operator and the admin API agree on its audience). Read again at every request.
    #[arg(long, env = "PEERBUBBLE_BUBBLE_TOKEN_FILE", group = "admin_api_proof")]
    pub bubble_token_file: Option<PathBuf>,
    /// How often health and session events go to the admin API, in milliseconds (default 10 000; at least 100).
    #[arg(long, env = "PEERBUBBLE_HEALTH_INTERVAL_MS", requires = "admin_api_url", value_parser = clap::value_parser!(u64).range(100..))]
    pub health_interval_ms: Option<u64>,
    /// Category policy file laid over the admin API's categories (the operator's ConfigMap in Kubernetes);
    /// re-read at every poll.
    #[arg(long, env = "PEERBUBBLE_POLICY_FILE", requires = "admin_api_url")]
    pub policy_file: Option<PathBuf>,
    /// Keep envelopes for members with no session in this SQLite file (the offline mailbox), delivered when
    /// they come back. Without it an envelope to an absent member is refused with `recipient_offline`.
    #[arg(long, env = "PEERBUBBLE_MAILBOX")]
    pub mailbox: Option<PathBuf>,
    /// Keep the offline mailbox (and the KeyPackages members publish) in the bubble's JetStream stream on the
    /// NATS server of `--nats`, shared by all its replicas, instead of one replica's file.
    #[arg(long, env = "PEERBUBBLE_MAILBOX_JETSTREAM", requires = "nats", conflicts_with = "mailbox")]
    pub mailbox_jetstream: bool,
    /// How long the mailbox keeps an envelope, in seconds (default 259 200 = 72 h; at most 14 days).
    #[arg(long, env = "PEERBUBBLE_MAILBOX_TTL_SECS")]
    pub mailbox_ttl_secs: Option<u64>,
    /// Bytes the mailbox keeps for one member (default 16 MiB).
    #[arg(long, env = "PEERBUBBLE_MAILBOX_MEMBER_BYTES")]
    pub mailbox_member_bytes: Option<usize>,
    /// Envelopes the mailbox keeps for one member (default 20 000).
    #[arg(long, env = "PEERBUBBLE_MAILBOX_MEMBER_ENTRIES")]
    pub mailbox_member_entries: Option<usize>,
    /// Bytes the mailbox keeps for the whole bubble (default 128 MiB; held in memory too).
    #[arg(long, env = "PEERBUBBLE_MAILBOX_TOTAL_BYTES")]
    pub mailbox_total_bytes: Option<usize>,
    /// How often expired envelopes are looked for, in milliseconds (default 60 000).
    #[arg(long, env = "PEERBUBBLE_MAILBOX_SWEEP_MS")]
    pub mailbox_sweep_ms: Option<u64>,
    /// Share presence, routing and the commit ledger with the bubble's other replicas through this NATS
    /// server (JetStream enabled), e.g. `nats://nats.peerbubble-system:4222`. Without it the bubble-server
    /// runs alone, as in the micro-node.
    #[arg(long, env = "PEERBUBBLE_NATS_URL")]
    pub nats: Option<String>,
    /// NATS credentials: a `.creds` file, or a directory holding `creds`, `token`, or `user` and `password`
    /// (a mounted Secret). Read once at start; never logged.
    #[arg(long, env = "PEERBUBBLE_NATS_CREDENTIALS", requires = "nats")]
    pub nats_credentials: Option<PathBuf>,
    /// The embedded TURN relay.
    #[command(flatten)]
    pub turn: TurnArgs,
}

/// The embedded TURN relay's flags. It runs when a secret file is given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TurnArgs {
    /// File holding the TURN shared secret (at least 32 bytes; a mounted Secret in Kubernetes). Enables TURN.
    #[arg(long, env = "PEERBUBBLE_TURN_SECRET_FILE")]
    pub turn_secret_file: Option<PathBuf>,
    /// UDP and TCP port of the TURN listeners (default 3478).
    #[arg(long, env = "PEERBUBBLE_TURN_UDP_PORT")]
    pub turn_udp_port: Option<u16>,
    /// TURN-over-TLS port (default 5349; 443 in production); 0 for none.
    #[arg(long, env = "PEERBUBBLE_TURN_TLS_PORT")]
    pub turn_tls_port: Option<u16>,
    /// Addresses the TURN listeners and relay sockets bind to, comma-separated, one per family (default: the
    /// signaling listen address).
    #[arg(long, env = "PEERBUBBLE_TURN_BIND", value_delimiter = ',')]
    pub turn_bind: Vec<IpAddr>,
    /// Addresses advertised for relay sockets when they differ from the bound ones (1:1 NAT), comma-separated.
    #[arg(long, env = "PEERBUBBLE_TURN_EXTERNAL_IP", value_delimiter = ',')]
    pub turn_external_ip: Vec<IpAddr>,
    /// Host name in the ICE server URLs given to members (default: the host they reached signaling at).
    #[arg(long, env = "PEERBUBBLE_TURN_PUBLIC_HOST")]
    pub turn_public_host: Option<String>,
    /// TLS certificate chain (PEM) for TURN over TLS; a self-signed one is made when unset.
    #[arg(long, env = "PEERBUBBLE_TURN_TLS_CERT", requires = "turn_tls_key")]
    pub turn_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "PEERBUBBLE_TURN_TLS_KEY", requires = "turn_tls_cert")]
    pub turn_tls_key: Option<PathBuf>,
    /// Relay port range, `low-high` (default 49152-65535).
    #[arg(long, env = "PEERBUBBLE_TURN_RELAY_PORTS")]
    pub turn_relay_ports: Option<String>,
    /// Cluster CIDRs the relay never sends to (pods, services), comma-separated.
    #[arg(long, env = "PEERBUBBLE_CLUSTER_CIDRS", value_delimiter = ',')]
    pub cluster_cidrs: Vec<String>,
    /// Ranges the relay may send to although special (loopback, private, ...), comma-separated: an operator's
    /// explicit choice.
    #[arg(long, env = "PEERBUBBLE_TURN_ALLOW_PEERS", value_delimiter = ',')]
    pub turn_allow_peers: Vec<String>,
    /// Seconds TURN credentials stay valid for new allocations (default 3600; refreshed at two thirds).
    #[arg(long, env = "PEERBUBBLE_TURN_CREDENTIAL_TTL_SECS")]
    pub turn_credential_ttl_secs: Option<u64>,
    /// Allocations at once in total (default 1000).
    #[arg(long, env = "PEERBUBBLE_TURN_MAX_ALLOCATIONS")]
    pub turn_max_allocations: Option<usize>,
    /// Allocations at once per member (default 10).
    #[arg(long, env = "PEERBUBBLE_TURN_MAX_ALLOCATIONS_PER_MEMBER")]
    pub turn_max_allocations_per_member: Option<usize>,
    /// Bytes per second one allocation may relay (default 5000000); 0 for no limit.
    #[arg(long, env = "PEERBUBBLE_TURN_BANDWIDTH")]
    pub turn_bandwidth: Option<u64>,
}

impl TurnArgs {
    /// The relay's configuration, or `None` when no secret is configured. `listen` is the signaling address,
    /// whose IP the relay binds by default.
    pub fn resolve(&self, listen: SocketAddr) -> Result<Option<TurnConfig>, ConfigError> {
        let Some(secret_file) = &self.turn_secret_file else { return Ok(None) };
        let bad = |what: String| ConfigError::Invalid(what);
        let bytes =
            std::fs::read(secret_file).map_err(|source| ConfigError::Read { path: secret_file.clone(), source })?;
        let secret = TurnSecret::new(bytes).map_err(|e| bad(format!("{}: {e}", secret_file.display())))?;
        let binds = if self.turn_bind.is_empty() { vec![listen.ip()] } else { self.turn_bind.clone() };
        let udp_port = self.turn_udp_port.unwrap_or(3478);
        let tls_port = match self.turn_tls_port.unwrap_or(5349) {
            0 => None,
            port => Some(port),
        };
        if tls_port == Some(udp_port) && udp_port != 0 {
            return Err(bad("turn_tls_port must differ from turn_udp_port (TCP listens there)".into()));
        }
        let ports = match &self.turn_relay_ports {
            None => (49152, 65535),
            Some(text) => text
                .split_once('-')
                .and_then(|(l, h)| Some((l.trim().parse::<u16>().ok()?, h.trim().parse::<u16>().ok()?)))
                .filter(|(l, h)| l <= h && *l > 0)
                .ok_or_else(|| bad(format!("turn_relay_ports {text:?} is not low-high")))?,
        };
        let cidrs = |list: &[String], what: &str| -> Result<Vec<Cidr>, ConfigError> {
            list.iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| c.trim().parse::<Cidr>().map_err(|e| bad(format!("{what}: {e}"))))
                .collect()
        };
        let tls = match (&self.turn_tls_cert, &self.turn_tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files { cert: cert.clone(), key: key.clone() },
            _ => {
                let mut names = vec!["localhost".to_owned()];
                names.extend(self.turn_public_host.iter().cloned());
                TlsSource::SelfSigned(names)
            }
        };
        let d = peerbubble_turn::Config::default();
        let core = peerbubble_turn::Config {
            max_allocations: self.turn_max_allocations.unwrap_or(d.max_allocations),
            max_allocations_per_member: self.turn_max_allocations_per_member.unwrap_or(d.max_allocations_per_member),
            bandwidth: self.turn_bandwidth.unwrap_or(d.bandwidth),
            ..d
        };
        let credential_ttl = Duration::from_secs(self.turn_credential_ttl_secs.unwrap_or(3600));
        if credential_ttl < Duration::from_secs(60) {
            return Err(bad("turn_credential_ttl_secs must be at least 60".into()));
        }
        Ok(Some(TurnConfig {
            secret,
            secret_file: Some(secret_file.clone()),
            listen: binds.iter().map(|ip| SocketAddr::new(*ip, udp_port)).collect(),
            tls_port,
            tls,
            relay_ips: binds,
            external_ips: self.turn_external_ip.clone(),
            ports,
            public_host: self.turn_public_host.clone(),
            credential_ttl,
            cluster: cidrs(&self.cluster_cidrs, "cluster_cidrs")?,
            allowed: cidrs(&self.turn_allow_peers, "turn_allow_peers")?,
            core,
            max_connections: 10_000,
        }))
    }
}

/// The YAML file form: the same keys as [`Config`], all optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    bubble_file: Option<PathBuf>,
    max_frame_bytes: Option<u32>,
    frames_per_second: Option<u32>,
    frame_burst: Option<u32>,
    member_frames_per_second: Option<u32>,
    max_sessions_per_member: Option<u32>,
    idle_timeout_secs: Option<u64>,
    challenge_ttl_secs: Option<u64>,
    send_queue_bytes: Option<usize>,
    max_connections: Option<usize>,
    reload_interval_ms: Option<u64>,
    max_groups: Option<usize>,
    mailbox: Option<PathBuf>,
    mailbox_jetstream: Option<bool>,
    mailbox_ttl_secs: Option<u64>,
    mailbox_member_bytes: Option<usize>,
    mailbox_member_entries: Option<usize>,
    mailbox_total_bytes: Option<usize>,
    mailbox_sweep_ms: Option<u64>,
    nats: Option<String>,
    nats_credentials: Option<PathBuf>,
}

/// The bubble-server's resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address (default `127.0.0.1:8480`).
    pub listen: SocketAddr,
    /// The bubble file (default `bubble.yaml`).
    pub bubble_file: PathBuf,
    /// Largest frame accepted (default 65536).
    pub max_frame_bytes: u32,
    /// Per-connection sustained rate (default 50/s).
    pub frames_per_second: u32,
    /// Per-connection burst (default 100).
    pub frame_burst: u32,
    /// Per-member sustained rate across sessions (default 100/s, burst twice that).
    pub member_frames_per_second: u32,
    /// Sessions per member (default 4).
    pub max_sessions_per_member: u32,
    /// Idle timeout (default 60 s).
    pub idle_timeout: Duration,
    /// Challenge lifetime (default 10 s).
    pub challenge_ttl: Duration,
    /// Per-session outbound byte budget (default 1 MiB).
    pub send_queue_bytes: usize,
    /// Connection cap (default 20 000, below the machine's file limit is the operator's job).
    pub max_connections: usize,
    /// Bubble-file check interval (default 500 ms).
    pub reload_interval: Duration,
    /// MLS groups in the commit ledger (default 100 000, some 16 MB); the least recently committed is
    /// forgotten past it.
    pub max_groups: usize,
    /// The embedded TURN relay, when configured.
    pub turn: Option<TurnConfig>,
    /// HTTPS (and `wss://`) on the listener, when set; plain HTTP otherwise (loopback development, or behind
    /// a TLS-terminating ingress in Kubernetes).
    pub tls: Option<crate::tls::ServerTls>,
    /// The offline mailbox, when set.
    pub mailbox: Option<crate::mailbox::MailboxConfig>,
    /// The link to the bubble's other replicas, when it has several.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8480)),
            bubble_file: PathBuf::from("bubble.yaml"),
            max_frame_bytes: MAX_FRAME_BYTES as u32,
            frames_per_second: 50,
            frame_burst: 100,
            member_frames_per_second: 100,
            max_sessions_per_member: 4,
            idle_timeout: Duration::from_secs(60),
            challenge_ttl: Duration::from_secs(10),
            send_queue_bytes: 1 << 20,
            max_connections: 20_000,
            reload_interval: Duration::from_millis(500),
            max_groups: 100_000,
            turn: None,
            tls: None,
            mailbox: None,
            cluster: None,
        }
    }
}

impl Config {
    /// Resolves flags and environment over the optional YAML file over the defaults, then checks ranges.
    pub fn resolve(args: &SignalArgs) -> Result<Self, ConfigError> {
        let file = match &args.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        let config = Config {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            bubble_file: args.bubble_file.clone().or(file.bubble_file).unwrap_or(d.bubble_file),
            max_frame_bytes: args.max_frame_bytes.or(file.max_frame_bytes).unwrap_or(d.max_frame_bytes),
            frames_per_second: args.frames_per_second.or(file.frames_per_second).unwrap_or(d.frames_per_second),
            frame_burst: args.frame_burst.or(file.frame_burst).unwrap_or(d.frame_burst),
            member_frames_per_second: args
                .member_frames_per_second
                .or(file.member_frames_per_second)
                .unwrap_or(d.member_frames_per_second),
            max_sessions_per_member: args
                .max_sessions_per_member
                .or(file.max_sessions_per_member)
                .unwrap_or(d.max_sessions_per_member),
            idle_timeout: args
                .idle_timeout_secs
                .or(file.idle_timeout_secs)
                .map(Duration::from_secs)
                .unwrap_or(d.idle_timeout),
            challenge_ttl: args
                .challenge_ttl_secs
                .or(file.challenge_ttl_secs)
                .map(Duration::from_secs)
                .unwrap_or(d.challenge_ttl),
            send_queue_bytes: args.send_queue_bytes.or(file.send_queue_bytes).unwrap_or(d.send_queue_bytes),
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(d.max_connections),
            reload_interval: args
                .reload_interval_ms
                .or(file.reload_interval_ms)
                .map(Duration::from_millis)
                .unwrap_or(d.reload_interval),
            max_groups: args.max_groups.or(file.max_groups).unwrap_or(d.max_groups),
            turn: None,
            tls: match (&args.signal_tls_cert, &args.signal_tls_key) {
                (Some(cert), Some(key)) => Some(
                    crate::tls::ServerTls::load(
                        &TlsSource::Files { cert: cert.clone(), key: key.clone() },
                        &[b"http/1.1"],
                    )
                    .map_err(|e| ConfigError::Invalid(format!("signaling TLS: {e}")))?,
                ),
                _ => None,
            },
            mailbox: match (
                args.mailbox.clone().or(file.mailbox),
                args.mailbox_jetstream || file.mailbox_jetstream == Some(true),
            ) {
                (None, false) => None,
                (path, jetstream) => Some(match path {
                    Some(path) if !jetstream => crate::mailbox::MailboxConfig::at(path),
                    _ => crate::mailbox::MailboxConfig::on_jetstream(),
                }),
            }
            .map(|d| crate::mailbox::MailboxConfig {
                ttl: args.mailbox_ttl_secs.or(file.mailbox_ttl_secs).map(Duration::from_secs).unwrap_or(d.ttl),
                member_bytes: args.mailbox_member_bytes.or(file.mailbox_member_bytes).unwrap_or(d.member_bytes),
                member_entries: args.mailbox_member_entries.or(file.mailbox_member_entries).unwrap_or(d.member_entries),
                total_bytes: args.mailbox_total_bytes.or(file.mailbox_total_bytes).unwrap_or(d.total_bytes),
                sweep_interval: args
                    .mailbox_sweep_ms
                    .or(file.mailbox_sweep_ms)
                    .map(Duration::from_millis)
                    .unwrap_or(d.sweep_interval),
                ..d
            }),
            cluster: args.nats.clone().or(file.nats).map(|url| {
                let mut cluster = crate::cluster::ClusterConfig::new(url);
                cluster.credentials = args.nats_credentials.clone().or(file.nats_credentials);
                cluster
            }),
        };
        let config = Config { turn: args.turn.resolve(config.listen)?, ..config };
        config.validate()?;
        Ok(config)
    }

    /// Checks that every value is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_owned()));
        if self.max_frame_bytes < 1024 || self.max_frame_bytes as usize > MAX_FRAME_BYTES {
            return bad("max_frame_bytes must be between 1024 and 65536");
        }
        if self.frames_per_second == 0 || self.frame_burst == 0 || self.member_frames_per_second == 0 {
            return bad("rates and bursts must be at least 1");
        }
        if self.max_sessions_per_member == 0 {
            return bad("max_sessions_per_member must be at least 1");
        }
        if self.idle_timeout < Duration::from_secs(1) || self.challenge_ttl < Duration::from_secs(1) {
            return bad("idle_timeout_secs and challenge_ttl_secs must be at least 1");
        }
        if self.send_queue_bytes < 2 * self.max_frame_bytes as usize {
            return bad("send_queue_bytes must hold at least two maximal frames");
        }
        if self.max_connections == 0 || self.reload_interval.is_zero() {
            return bad("max_connections and reload_interval_ms must be positive");
        }
        if self.max_groups == 0 {
            return bad("max_groups must be at least 1");
        }
        if let Some(mailbox) = &self.mailbox {
            mailbox.validate().map_err(|what| ConfigError::Invalid(what.to_owned()))?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate().map_err(ConfigError::Invalid)?;
            if self.mailbox.as_ref().is_some_and(|m| !m.jetstream) {
                return bad("the offline mailbox file (mailbox) is one bubble-server's, and replicas sharing state \
                    over NATS (nats) would split it between them: keep it in JetStream (mailbox_jetstream) instead");
            }
        } else if self.mailbox.as_ref().is_some_and(|m| m.jetstream) {
            return bad("the JetStream mailbox (mailbox_jetstream) needs the NATS server of the replicas (nats)");
        }
        Ok(())
    }

    /// The limits announced to clients in `welcome`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_body_bytes: peerbubble_proto::limits::MAX_BODY_BYTES as u32,
            frames_per_second: self.frames_per_second,
            frame_burst: self.frame_burst,
            member_frames_per_second: self.member_frames_per_second,
            max_sessions_per_member: self.max_sessions_per_member,
            idle_timeout_ms: self.idle_timeout.as_millis() as u64,
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    serde_saphyr::from_str(&text).map_err(|err| ConfigError::Parse { path: path.into(), reason: err.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "frames_per_second: 7\nframe_burst: 9\n")?;
        let args = SignalArgs { config_file: Some(path), frame_burst: Some(11), ..Default::default() };
        let config = Config::resolve(&args)?;
        assert_eq!(config.frames_per_second, 7);
        assert_eq!(config.frame_burst, 11);
        assert_eq!(config.max_sessions_per_member, Config::default().max_sessions_per_member);
        Ok(())
    }

    #[test]
    fn replicas_on_nats_are_checked_and_refuse_a_mailbox_with_the_reason() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let nats = |url: &str| SignalArgs { nats: Some(url.into()), ..Default::default() };
        let cluster = Config::resolve(&nats("nats://nats:4222"))?.cluster.ok_or("no cluster link")?;
        assert_eq!(cluster.url, "nats://nats:4222");
        let err = Config::resolve(&nats("http://nats:4222"));
        assert!(matches!(&err, Err(ConfigError::Invalid(m)) if m.contains("nats://")), "{err:?}");
        // A mailbox file is one replica's: refused with NATS, saying why and what to use instead.
        let both = SignalArgs { mailbox: Some(dir.path().join("m.sqlite")), ..nats("nats://nats:4222") };
        let err = Config::resolve(&both);
        assert!(matches!(&err, Err(ConfigError::Invalid(m)) if m.contains("split it between them")), "{err:?}");
        assert!(matches!(&err, Err(ConfigError::Invalid(m)) if m.contains("mailbox_jetstream")), "{err:?}");
        let shared = SignalArgs { mailbox_jetstream: true, mailbox_ttl_secs: Some(3600), ..nats("nats://nats:4222") };
        let mailbox = Config::resolve(&shared)?.mailbox.ok_or("no mailbox")?;
        assert!(mailbox.jetstream);
        assert_eq!(mailbox.ttl, Duration::from_secs(3600));
        // Without NATS there is no JetStream to keep it in.
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "mailbox_jetstream: true\n")?;
        let err = Config::resolve(&SignalArgs { config_file: Some(path), ..Default::default() });
        assert!(matches!(&err, Err(ConfigError::Invalid(m)) if m.contains("needs the NATS server")), "{err:?}");
        Ok(())
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "frames_per_secnd: 7\n")?;
        let err = Config::resolve(&SignalArgs { config_file: Some(path), ..Default::default() });
        assert!(matches!(err, Err(ConfigError::Parse { .. })), "{err:?}");
        let err = Config::resolve(&SignalArgs { max_frame_bytes: Some(1 << 20), ..Default::default() });
        assert!(matches!(err, Err(ConfigError::Invalid(_))), "{err:?}");
        // A mailbox keeps envelopes at most 14 days.
        let args = SignalArgs {
            mailbox: Some(dir.path().join("m.sqlite")),
            mailbox_ttl_secs: Some(15 * 24 * 3600),
            ..Default::default()
        };
        let err = Config::resolve(&args);
        assert!(matches!(&err, Err(ConfigError::Invalid(m)) if m.contains("14 days")), "{err:?}");
        let args = SignalArgs { mailbox: Some(dir.path().join("m.sqlite")), ..Default::default() };
        let mailbox = Config::resolve(&args)?.mailbox.ok_or("no mailbox")?;
        assert_eq!(mailbox.ttl, Duration::from_secs(72 * 3600));
        Ok(())
    }
}
