//! What every connection of one bubble-server shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use tokio::sync::watch;

use crate::config::Config;
use crate::directory::Directory;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::session::{NonceLedger, SessionConfig};
use crate::turn::TurnRelay;

pub(crate) struct AppState {
    pub config: Config,
    pub session_config: SessionConfig,
    pub hub: Hub,
    pub nonces: NonceLedger,
    pub metrics: Metrics,
    pub directory: watch::Receiver<Option<Arc<Directory>>>,
    pub shutdown: watch::Receiver<bool>,
    pub shutting_down: AtomicBool,
    /// WebSocket connections open (authenticated or not).
    pub open: AtomicUsize,
    pub turn: Option<Arc<TurnRelay>>,
    /// The link to the bubble's other replicas, when it has several.
    pub cluster: Option<crate::cluster::Link>,
    /// Told when every connection is closed at shutdown: the cluster link says goodbye then.
    pub cluster_stop: tokio::sync::Notify,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        metrics: Metrics,
        directory: watch::Receiver<Option<Arc<Directory>>>,
        shutdown: watch::Receiver<bool>,
        turn: Option<Arc<TurnRelay>>,
        mailbox: Option<crate::mailbox::Mailbox>,
        shared: Option<Arc<crate::shared_mailbox::SharedMailbox>>,
        cluster: Option<(crate::cluster::Link, tokio::sync::mpsc::UnboundedSender<crate::hub::LocalPresence>)>,
    ) -> Self {
        let (cluster, presence) = match cluster {
            Some((link, presence)) => (Some(link), Some(presence)),
            None => (None, None),
        };
        let session_config = SessionConfig {
            max_frame_bytes: config.max_frame_bytes as usize,
            frames_per_second: config.frames_per_second,
            frame_burst: config.frame_burst,
            idle_timeout: config.idle_timeout,
            challenge_ttl: config.challenge_ttl,
        };
        Self {
            hub: Hub::new(
                config.max_sessions_per_member,
                config.member_frames_per_second,
                config.max_frame_bytes as usize,
                config.max_groups,
                metrics.clone(),
                directory.clone(),
                mailbox,
                shared,
                cluster.as_ref().map(|link| link.replica).zip(presence),
            ),
            nonces: NonceLedger::new(config.challenge_ttl),
            session_config,
            config,
            metrics,
            directory,
            shutdown,
            shutting_down: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            turn,
            cluster,
            cluster_stop: tokio::sync::Notify::new(),
        }
    }

    /// Resolves when the server, shutting down, has closed every connection.
    pub async fn stopping(&self) {
        self.cluster_stop.notified().await;
    }
}
