//! A signaling v1 client over tokio-tungstenite.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use peerbubble_proto::{
    ClientFrame, DirectoryEntry, ErrorCode, GroupId, IceServer, IdentityKey, Limits, MemberId, Opaque, Purpose,
    Recipients, ServerFrame, SessionId, auth_message, decode_server_frame, encode_frame,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
}

/// An authenticated signaling session.
#[derive(Debug)]
pub struct SignalClient {
    ws: Ws,
    member: MemberId,
    session: SessionId,
    bubble: String,
    limits: Limits,
    directory: BTreeMap<MemberId, DirectoryEntry>,
    pending_directory: Vec<DirectoryEntry>,
    next_id: u64,
    close_code: Option<u16>,
    ice_servers: Vec<IceServer>,
}

/// How long to wait for each handshake step.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl SignalClient {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8480/v1/signal`), answers the challenge with `key` and waits
    /// for `welcome` and the complete directory.
    pub async fn connect(url: &str, key: &IdentityKey) -> Result<Self, ClientError> {
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
        let (bubble, nonce) = match next_frame(&mut ws, HANDSHAKE_TIMEOUT).await? {
            ServerFrame::Challenge { protocol: peerbubble_proto::PROTOCOL_VERSION, bubble, nonce, .. } => {
                (bubble, nonce)
            }
            other => return Err(unexpected("challenge", &other)),
        };
        let public_key = key.public_key();
        let signature = key.sign(Purpose::SignalAuth, &auth_message(&bubble, &nonce, &public_key));
        ws.send(Message::text(encode_frame(&ClientFrame::Auth { public_key, nonce, signature }))).await?;
        let (member, session, limits, ice_servers) = match next_frame(&mut ws, HANDSHAKE_TIMEOUT).await? {
            ServerFrame::Welcome { member, session, limits, ice_servers, .. } => (member, session, limits, ice_servers),
            other => return Err(unexpected("welcome", &other)),
        };
        if member != public_key.member_id() {
            return Err(ClientError::Protocol("welcome names another member".into()));
        }
        let mut client = Self {
            ws,
            member,
            session,
            bubble,
            limits,
            directory: BTreeMap::new(),
            pending_directory: Vec::new(),
            next_id: 1,
            close_code: None,
            ice_servers,
        };
        // The directory follows at once; wait until it is complete.
        loop {
            let frame = client.next_timeout(HANDSHAKE_TIMEOUT).await?;
            if let ServerFrame::Directory { part, parts, .. } = frame
                && part + 1 == parts
            {
                return Ok(client);
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
        &self.ice_servers
    }

    /// Our member id.
    pub fn member(&self) -> MemberId {
        self.member
    }

    /// Our session id.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The bubble id.
    pub fn bubble(&self) -> &str {
        &self.bubble
    }

    /// The limits the server announced.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The members we may see, as last told by the server.
    pub fn directory(&self) -> &BTreeMap<MemberId, DirectoryEntry> {
        &self.directory
    }

    /// Display names of the members we may see, sorted (for people and tests).
    pub fn display_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.directory.values().map(|e| e.display_name.clone()).collect();
        names.sort();
        names
    }

    /// Visible members currently online.
    pub fn online(&self) -> Vec<MemberId> {
        self.directory.values().filter(|e| e.online).map(|e| e.member).collect()
    }

    /// The close code the server sent, once closed.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Sends an envelope to every session of `to`; returns the frame id that `ack` or `error` will carry.
    pub async fn send(&mut self, to: MemberId, body: &[u8]) -> Result<u64, ClientError> {
        self.send_to(to, None, body).await
    }

    /// Sends an envelope to one session of `to`, or all.
    pub async fn send_to(
        &mut self,
        to: MemberId,
        to_session: Option<SessionId>,
        body: &[u8],
    ) -> Result<u64, ClientError> {
        let body = Opaque::from_bytes(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let id = self.next_id;
        self.next_id += 1;
        self.send_frame(&ClientFrame::Send { id, to, to_session, from: None, body }).await?;
        Ok(id)
    }

    /// Sends an MLS commit for the server to order: `group` is the MLS group id (16 to 32 bytes), `epoch` the
    /// group's epoch the commit was made in, `to` the members to relay it to (not ourselves; may be empty).
    /// Returns the frame id that `ack` (the commit won its epoch) or `error` (`commit_conflict`: another commit
    /// won it; process that one, then commit again) will carry. What the server would refuse as
    /// `invalid_field` is refused here, unsent.
    pub async fn commit(&mut self, group: &[u8], epoch: u64, to: &[MemberId], body: &[u8]) -> Result<u64, ClientError> {
        if to.contains(&self.member) {
            return Err(ClientError::Protocol("a commit's to may not name ourselves".into()));
        }
        if epoch == u64::MAX {
            return Err(ClientError::Protocol("epoch 2^64 - 1 has no successor".into()));
        }
        let group = GroupId::from_bytes(group).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let to = Recipients::new(to.to_vec()).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let body = Opaque::from_bytes(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let id = self.next_id;
        self.next_id += 1;
        self.send_frame(&ClientFrame::Commit { id, group, epoch, to, body }).await?;
        Ok(id)
    }

    /// Sends a keep-alive.
    pub async fn ping(&mut self) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_frame(&ClientFrame::Ping { id }).await?;
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
        match frame {
            ServerFrame::IceServers { ice_servers, .. } => self.ice_servers.clone_from(ice_servers),
            ServerFrame::Directory { part, parts, entries } => {
                if *part == 0 {
                    self.pending_directory.clear();
                }
                for entry in entries {
                    // Checked again by the client: the id must be the key's, and never ourselves.
                    if entry.public_key.member_id() != entry.member || entry.member == self.member {
                        return Err(ClientError::Protocol("directory entry with inconsistent member id".into()));
                    }
                }
                self.pending_directory.extend(entries.iter().cloned());
                if part + 1 == *parts {
                    self.directory = self.pending_directory.drain(..).map(|e| (e.member, e)).collect();
                }
            }
            ServerFrame::Presence { member, online } => {
                if let Some(entry) = self.directory.get_mut(member) {
                    entry.online = *online;
                }
            }
            _ => {}
        }
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

async fn next_frame(ws: &mut Ws, timeout: Duration) -> Result<ServerFrame, ClientError> {
    let frame = tokio::time::timeout(timeout, read_frame(ws)).await.map_err(|_| ClientError::Timeout)??;
    if let ServerFrame::Error { code, message, retry_after_ms, .. } = frame {
        return Err(ClientError::Refused { code, message, retry_after_ms });
    }
    Ok(frame)
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

fn unexpected(wanted: &str, got: &ServerFrame) -> ClientError {
    if let ServerFrame::Error { code, message, retry_after_ms, .. } = got {
        return ClientError::Refused { code: *code, message: message.clone(), retry_after_ms: *retry_after_ms };
    }
    ClientError::Protocol(format!("expected {wanted}, got another frame"))
}
