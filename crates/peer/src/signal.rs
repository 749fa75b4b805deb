//! A signaling v1 client over tokio-tungstenite: the IO edge of client-core's sans-IO [`Signaling`] machine,
//! which answers the challenge, checks `welcome`, reassembles the directory and follows presence. Only the
//! socket lives here (and raw access for tests of hostile input and for load generators).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use peerbubble_client_core::{SignalEvent, Signaling, SignalingError};
use peerbubble_proto::{
    ClientFrame, DirectoryEntry, ErrorCode, IceServer, IdentityKey, Limits, MemberId, ServerFrame, SessionId,
    decode_server_frame, encode_frame,
};
use peerbubble_tls_trust::Trust;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A text message as received, shared rather than copied (see [`SignalClient::next_raw`]).
pub type RawText = tokio_tungstenite::tungstenite::Utf8Bytes;

/// Errors of the signaling client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket could not be opened or broke.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server refused us.
    #[error("refused by the server: {code:?}: {message}")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// When to retry, if the server said.
        retry_after_ms: Option<u64>,
    },
    /// The server broke the protocol (malformed frame, unexpected frame, inconsistent directory).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The connection closed.
    #[error("connection closed{}", .0.as_ref().map(|c| format!(" with code {}", c)).unwrap_or_default())]
    Closed(Option<u16>),
    /// Nothing arrived in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The TLS configuration for a `wss://` URL could not be made.
    #[error(transparent)]
    Tls(#[from] peerbubble_tls_trust::TrustError),
}

/// Opens the WebSocket to `url`: `ws://` in the clear, `wss://` trusting what `trust` says (the system's
/// authorities, or exactly the pinned certificate of a self-signed micro-node).
pub async fn open_socket(url: &str, trust: Trust) -> Result<Ws, ClientError> {
    let connector = if url.starts_with("wss://") {
        Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(peerbubble_tls_trust::client_config(trust)?)))
    } else {
        None
    };
    match tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector).await {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(peerbubble_tls_trust::not_pinned(&e).map_or(ClientError::WebSocket(e), ClientError::Tls)),
    }
}

/// An authenticated signaling session.
#[derive(Debug)]
pub struct SignalClient {
    ws: Ws,
    core: Signaling,
    session: SessionId,
    limits: Limits,
    bubble: String,
    close_code: Option<u16>,
    clock: Instant,
    /// Ids for frames sent past the machine's checks (far above the machine's own).
    unchecked_id: u64,
}

/// How long to wait for each handshake step.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl From<SignalingError> for ClientError {
    fn from(err: SignalingError) -> Self {
        ClientError::Protocol(err.to_string())
    }
}

impl SignalClient {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8480/v1/signal`), answers the challenge with `key` and waits
    /// for `welcome` and the complete directory.
    pub async fn connect(url: &str, key: &IdentityKey) -> Result<Self, ClientError> {
        Self::connect_with(url, key, Trust::System).await
    }

    /// Like [`SignalClient::connect`], trusting what `trust` says for a `wss://` URL.
    pub async fn connect_with(url: &str, key: &IdentityKey, trust: Trust) -> Result<Self, ClientError> {
        let clock = Instant::now();
        let mut core = Signaling::new(IdentityKey::from_seed(&key.to_seed()), None);
        let mut ws = open_socket(url, trust).await?;
        core.connected(0);
        loop {
            let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut ws))
                .await
                .map_err(|_| ClientError::Timeout)??;
            if let ServerFrame::Error { code, message, retry_after_ms, .. } = frame {
                return Err(ClientError::Refused { code, message, retry_after_ms });
            }
            let now = clock.elapsed().as_millis() as u64;
            core.handle_frame(&frame, now)?;
            while let Some(text) = core.poll_transmit() {
                ws.send(Message::text(text)).await?;
            }
            while let Some(event) = core.poll_event() {
                if let SignalEvent::Ready { session } = event {
                    let limits = core.limits().ok_or(ClientError::Protocol("no limits".into()))?;
                    let bubble = core.bubble().unwrap_or_default().to_owned();
                    return Ok(Self {
                        ws,
                        core,
                        session,
                        limits,
                        bubble,
                        close_code: None,
                        clock,
                        unchecked_id: 1 << 48,
                    });
                }
            }
        }
    }

    /// Opens a raw WebSocket (for tests of malformed or hostile input).
    pub async fn raw(url: &str) -> Result<RawSocket, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
        Ok(RawSocket { ws })
    }

    /// The STUN/TURN servers and TURN credentials the server gave us (from `welcome`, then `ice_servers`).
    pub fn ice_servers(&self) -> &[IceServer] {
        self.core.ice_servers()
    }

    /// Our member id.
    pub fn member(&self) -> MemberId {
        self.core.member()
    }

    /// Our session id.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The bubble id from the challenge.
    pub fn bubble(&self) -> &str {
        &self.bubble
    }

    /// The limits from `welcome`.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The bubble's policy, from `welcome` and then `policy` frames.
    pub fn policy(&self) -> &peerbubble_proto::BubblePolicy {
        self.core.policy()
    }

    /// The visible directory slice, kept up to date by [`SignalClient::next`].
    pub fn directory(&self) -> &BTreeMap<MemberId, DirectoryEntry> {
        self.core.directory()
    }

    /// Display names in the directory, sorted.
    pub fn display_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.directory().values().map(|e| e.display_name.clone()).collect();
        names.sort();
        names
    }

    /// Members currently online, per presence.
    pub fn online(&self) -> Vec<MemberId> {
        self.directory().values().filter(|e| e.online).map(|e| e.member).collect()
    }

    /// The close code, once the server closed the connection.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    async fn flush_core(&mut self) -> Result<(), ClientError> {
        while let Some(text) = self.core.poll_transmit() {
            self.ws.feed(Message::text(text)).await?;
        }
        self.ws.flush().await?;
        Ok(())
    }

    /// Sends an envelope to every session of `to`; returns the frame id that `ack` or `error` will carry.
    pub async fn send(&mut self, to: MemberId, body: &[u8]) -> Result<u64, ClientError> {
        self.send_to(to, None, body).await
    }

    /// Sends an envelope to one session of `to`, or all. A member outside our directory is refused here,
    /// unsent (need-to-know, checked by the client too); tests of the server's own check use
    /// [`SignalClient::send_frame`].
    pub async fn send_to(
        &mut self,
        to: MemberId,
        to_session: Option<SessionId>,
        body: &[u8],
    ) -> Result<u64, ClientError> {
        let now = self.now();
        let id = self.core.send(to, to_session, body, now)?;
        self.flush_core().await?;
        Ok(id)
    }

    /// Sends an MLS commit for the server to order: `group` is the MLS group id (16 to 32 bytes), `epoch` the
    /// group's epoch the commit was made in, `to` the members to relay it to (not ourselves; may be empty).
    /// Returns the frame id that `ack` (the commit won its epoch) or `error` (`commit_conflict`: another commit
    /// won it; process that one, then commit again) will carry. What the server would refuse as
    /// `invalid_field` is refused here, unsent.
    pub async fn commit(&mut self, group: &[u8], epoch: u64, to: &[MemberId], body: &[u8]) -> Result<u64, ClientError> {
        let now = self.now();
        let id = self.core.commit(group, epoch, to, body, now)?;
        self.flush_core().await?;
        Ok(id)
    }

    /// Sends a keep-alive.
    pub async fn ping(&mut self) -> Result<u64, ClientError> {
        let now = self.now();
        let id = self.core.ping(now)?;
        self.flush_core().await?;
        Ok(id)
    }

    /// Sends an envelope past the client's own checks: for tests of the server's (need-to-know).
    pub async fn send_unchecked(&mut self, to: MemberId, body: &[u8]) -> Result<u64, ClientError> {
        let body = peerbubble_proto::Opaque::from_bytes(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.unchecked_id += 1;
        let id = self.unchecked_id;
        self.send_frame(&ClientFrame::Send { id, to, to_session: None, from: None, body }).await?;
        Ok(id)
    }

    /// Sends a commit past the client's own checks: for tests of the server's.
    pub async fn commit_unchecked(
        &mut self,
        group: &[u8],
        epoch: u64,
        to: &[MemberId],
        body: &[u8],
    ) -> Result<u64, ClientError> {
        let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol(e.to_string());
        let group = peerbubble_proto::GroupId::from_bytes(group).map_err(|e| protocol(&e))?;
        let to = peerbubble_proto::Recipients::new(to.to_vec()).map_err(|e| protocol(&e))?;
        let body = peerbubble_proto::Opaque::from_bytes(body).map_err(|e| protocol(&e))?;
        self.unchecked_id += 1;
        let id = self.unchecked_id;
        self.send_frame(&ClientFrame::Commit { id, group, epoch, to, body }).await?;
        Ok(id)
    }

    /// Sends any frame.
    pub async fn send_frame(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.send_text(encode_frame(frame)).await
    }

    /// Sends raw text (tests of hostile input).
    pub async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next frame, with directory and presence frames applied to [`SignalClient::directory`] (and still
    /// returned). `error` frames are returned as frames, not as `Err`.
    pub async fn next(&mut self) -> Result<ServerFrame, ClientError> {
        let frame = match read_frame(&mut self.ws).await {
            Ok(frame) => frame,
            Err(ClientError::Closed(code)) => {
                self.close_code = code;
                return Err(ClientError::Closed(code));
            }
            Err(err) => return Err(err),
        };
        self.apply(&frame)?;
        Ok(frame)
    }

    /// The next text message, undecoded and not applied to the directory: for load generators that must not
    /// spend their CPU on parsing. Everything else should use [`SignalClient::next`].
    pub async fn next_raw(&mut self) -> Result<RawText, ClientError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(frame))) => return Err(ClientError::Closed(frame.map(|f| u16::from(f.code)))),
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(err.into()),
                None => return Err(ClientError::Closed(None)),
            }
        }
    }

    /// Every text message that has already arrived, without waiting (for load generators, like
    /// [`SignalClient::next_raw`]).
    pub fn ready_raw(&mut self) -> Result<Vec<RawText>, ClientError> {
        use futures_util::FutureExt as _;
        let mut out = Vec::new();
        while let Some(message) = self.ws.next().now_or_never() {
            match message {
                Some(Ok(Message::Text(text))) => out.push(text),
                Some(Ok(Message::Close(frame))) => return Err(ClientError::Closed(frame.map(|f| u16::from(f.code)))),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => return Err(ClientError::Closed(None)),
            }
        }
        Ok(out)
    }

    /// Sends several raw texts with one flush (load generators).
    pub async fn send_texts(&mut self, texts: Vec<String>) -> Result<(), ClientError> {
        for text in texts {
            self.ws.feed(Message::text(text)).await?;
        }
        self.ws.flush().await?;
        Ok(())
    }

    /// [`SignalClient::next`] with a timeout.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<ServerFrame, ClientError> {
        tokio::time::timeout(timeout, self.next()).await.map_err(|_| ClientError::Timeout)?
    }

    fn apply(&mut self, frame: &ServerFrame) -> Result<(), ClientError> {
        let now = self.now();
        self.core.handle_frame(frame, now)?;
        // Events are read from the frames themselves by this edge's callers; the machine's copy is dropped.
        while self.core.poll_event().is_some() {}
        Ok(())
    }

    /// Closes politely.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(Some(CloseFrame { code: 1000.into(), reason: "bye".into() })).await?;
        Ok(())
    }
}

/// A WebSocket that has not authenticated: for tests of what the server does with hostile input.
#[derive(Debug)]
pub struct RawSocket {
    ws: Ws,
}

impl RawSocket {
    /// Sends a text message.
    pub async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends a binary message.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.ws.send(Message::binary(bytes)).await?;
        Ok(())
    }

    /// The next frame, or the close code as `Err(Closed)`.
    pub async fn next(&mut self, timeout: Duration) -> Result<ServerFrame, ClientError> {
        tokio::time::timeout(timeout, read_frame(&mut self.ws)).await.map_err(|_| ClientError::Timeout)?
    }
}

async fn read_frame(ws: &mut Ws) -> Result<ServerFrame, ClientError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return decode_server_frame(text.as_bytes()).map_err(|e| ClientError::Protocol(e.to_string()));
            }
            Some(Ok(Message::Close(frame))) => return Err(ClientError::Closed(frame.map(|f| u16::from(f.code)))),
            Some(Ok(Message::Binary(_))) => return Err(ClientError::Protocol("binary frame".into())),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => return Err(ClientError::Closed(None)),
        }
    }
}
