//! The browser edge of the PeerBubble client: client-core behind wasm-bindgen, meant to run in a dedicated
//! module Web Worker that also owns the signaling WebSocket (docs/adr/0016). The page never holds key material:
//! the identity key is made here and only public values and events cross to JavaScript.
//!
//! What it must never do: return a private key, a message key or a passphrase-derived secret to JavaScript, or
//! log envelope content.
//!
//! [`member::Member`] is the whole client the worker runs (key store, identity, signaling and conversations);
//! [`SignalingSession`] is the signaling session alone. DataChannel bytes cross as MLS ciphertext (ADR 0018).

#![forbid(unsafe_code)]

use peerbubble_client_core::{SignalEvent, Signaling};
use peerbubble_proto::{IdentityKey, MemberId};
use serde_json::json;
use wasm_bindgen::prelude::*;

pub mod member;

pub use member::{Enrollment, Member, StoredRecord, Vault};

fn js_error(err: impl std::fmt::Display) -> JsError {
    JsError::new(&err.to_string())
}

/// The member's signaling session to one bubble, across reconnections. The worker opens a WebSocket when an
/// event says `connect`, and feeds it in; see client-core's `Signaling` for the contract.
#[wasm_bindgen]
#[derive(Debug)]
pub struct SignalingSession {
    inner: Signaling,
}

#[wasm_bindgen]
impl SignalingSession {
    /// A session with a fresh identity key made here (it never leaves WebAssembly), for `bubble`.
    pub fn generate(bubble: String) -> Result<SignalingSession, JsError> {
        let key = IdentityKey::generate().map_err(js_error)?;
        Ok(Self { inner: Signaling::new(key, Some(bubble)) })
    }

    /// Our member id (hex).
    #[wasm_bindgen(js_name = memberId)]
    pub fn member_id(&self) -> String {
        self.inner.member().to_string()
    }

    /// The WebSocket opened.
    pub fn connected(&mut self, now_ms: f64) {
        self.inner.connected(now_ms as u64);
    }

    /// The WebSocket closed (with the server's close code, if any).
    pub fn disconnected(&mut self, close_code: Option<u16>, now_ms: f64) {
        self.inner.disconnected(close_code, now_ms as u64);
    }

    /// A text message arrived. A protocol violation is an error, after a `disconnect` event was queued.
    #[wasm_bindgen(js_name = handleText)]
    pub fn handle_text(&mut self, text: &str, now_ms: f64) -> Result<(), JsError> {
        self.inner.handle_text(text.as_bytes(), now_ms as u64).map_err(js_error)
    }

    /// Timers: call at `pollTimeout()`.
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self, now_ms: f64) {
        self.inner.handle_timeout(now_ms as u64);
    }

    /// When to call `handleTimeout`, if ever.
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> Option<f64> {
        self.inner.poll_timeout().map(|t| t as f64)
    }

    /// The next text frame to write to the WebSocket.
    #[wasm_bindgen(js_name = pollTransmit)]
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.inner.poll_transmit()
    }

    /// The next event, as JSON text with a `type` field.
    #[wasm_bindgen(js_name = pollEvent)]
    pub fn poll_event(&mut self) -> Option<String> {
        self.inner.poll_event().map(|event| event_json(&event).to_string())
    }

    /// Sends `body` (end-to-end-encrypted bytes) to every session of `to`; the id its ack will carry.
    pub fn send(&mut self, to: &str, body: &[u8], now_ms: f64) -> Result<f64, JsError> {
        let to: MemberId = to.parse().map_err(js_error)?;
        let id = self.inner.send(to, None, body, now_ms as u64).map_err(js_error)?;
        Ok(id as f64)
    }

    /// The members this member may see, as JSON: `[{member, displayName, categories, online}]`.
    pub fn directory(&self) -> String {
        let entries: Vec<_> = self
            .inner
            .directory()
            .values()
            .map(|e| {
                json!({
                    "member": e.member.to_string(),
                    "displayName": e.display_name,
                    "categories": e.categories,
                    "online": e.online,
                })
            })
            .collect();
        serde_json::Value::Array(entries).to_string()
    }
}

/// Events as the worker posts them to the page: public routing facts only, never a body's plaintext (bodies are
/// end-to-end ciphertext, given to client-core, not to the page).
pub(crate) fn event_json(event: &SignalEvent) -> serde_json::Value {
    match event {
        SignalEvent::Connect => json!({"type": "connect"}),
        SignalEvent::Disconnect => json!({"type": "disconnect"}),
        SignalEvent::Ready { session } => json!({"type": "ready", "session": session.0}),
        SignalEvent::DirectoryChanged => json!({"type": "directoryChanged"}),
        SignalEvent::Presence { member, online } => {
            json!({"type": "presence", "member": member.to_string(), "online": online})
        }
        SignalEvent::IceServers => json!({"type": "iceServers"}),
        SignalEvent::PolicyChanged => json!({"type": "policy"}),
        SignalEvent::Deliver { from, from_session, body, seq } => json!({"type": "deliver", "from": from.to_string(),
            "fromSession": from_session.0, "bytes": body.wire_len(), "kept": seq.is_some()}),
        SignalEvent::Gap { lost, groups } => json!({"type": "gap", "lost": lost, "groups": groups.len()}),
        SignalEvent::Ack { id, sessions, stored } => {
            json!({"type": "ack", "id": id, "sessions": sessions, "stored": stored})
        }
        SignalEvent::Refused { id, code, retry_after_ms } => {
            json!({"type": "refused", "id": id, "code": code.as_str(), "retryAfterMs": retry_after_ms})
        }
        SignalEvent::Closed { code, retry_in_ms } => {
            json!({"type": "closed", "code": code.map(|c| c.as_str()), "retryInMs": retry_in_ms})
        }
        // A member's session consumes these (it publishes and claims); a bare signaling session only reports them.
        SignalEvent::KeyPackageStock { one_time, last_resort } => {
            json!({"type": "keyPackageStock", "oneTime": one_time, "lastResort": last_resort})
        }
        SignalEvent::ClaimedKeyPackage { id, member, key_package } => json!({"type": "claimedKeyPackage", "id": id,
            "member": member.to_string(), "found": key_package.is_some()}),
    }
}

#[wasm_bindgen]
extern "C" {
    /// The page's or worker's high-resolution clock, in milliseconds.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// Sets up a 1:1 conversation between two throw-away clients made for it and exchanges two texts, in memory:
/// the engine compiles the MLS code (KeyPackage, commit, Welcome, messages) now, while the member reads the lock
/// screen, instead of inside their first conversation. Cold, the step that adds a contact took 40–54 ms in the
/// worker and the Welcome 25–33 ms; warm, 5–10 ms each (BENCHMARKS.md, `bench browser`). Touches no member's
/// keys, storage or network; whatever fails here changes nothing (the member's own set-up runs as before).
#[wasm_bindgen(js_name = warmUp)]
pub fn warm_up() {
    let mut clock = performance_now;
    let _ = peerbubble_client_core::bench::message_cost(2, 256, &mut clock);
}

/// Microseconds per MLS message (encrypt + decrypt) over `n` texts of `bytes` bytes and their receipts, between
/// two throw-away clients in this module: `cargo xtask bench browser` compares it with the same code run
/// natively (`peerbubble_client_core::bench`). Touches no member's keys or storage.
#[wasm_bindgen(js_name = benchMessages)]
pub fn bench_messages(n: u32, bytes: u32) -> Result<f64, JsError> {
    let mut clock = performance_now;
    peerbubble_client_core::bench::message_cost(n, bytes as usize, &mut clock).map_err(|e| JsError::new(&e.to_string()))
}

/// What one 16 KiB chunk of a file transfer costs in this module, in microseconds, as JSON `{seal, open, sha256}`
/// over `n` chunks through the real transfer state machines: `cargo xtask bench browser-media` compares it with
/// the same code run natively. Touches no member's keys, storage or network.
#[wasm_bindgen(js_name = benchFileChunks)]
pub fn bench_file_chunks(n: u32) -> Result<String, JsError> {
    let mut clock = performance_now;
    let cost = peerbubble_client_core::bench::chunk_cost(n, &mut clock).map_err(|e| JsError::new(&e.to_string()))?;
    serde_json::to_string(&cost).map_err(|e| JsError::new(&e.to_string()))
}
