//! The cost of one chat message, measured the same way on every edge: `cargo xtask bench e2ee` runs it natively,
//! `cargo xtask bench browser` runs it compiled to WebAssembly in Chromium, and the two figures are compared.
//!
//! Two clients with fresh random keys (nothing of a member's) share a 1:1 conversation in the post-quantum
//! hybrid suite; each text one sends is MLS-encrypted, decrypted by the other, and answered by an automatic
//! delivery receipt (itself an MLS message), so `2 n` messages are timed and the figure is per message. Outputs
//! are handed over in memory: no transport, no storage.

use peerbubble_proto::{DirectoryEntry, IdentityKey};

use crate::{Client, ClientError, Output, Path};

/// Why a measurement could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// No randomness for the keys.
    #[error("cannot make a key: {0}")]
    Key(String),
    /// The conversation or a message failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The conversation did not become ready.
    #[error("the conversation did not become ready")]
    NotReady,
    /// Fewer texts arrived than were sent: the figure would mean nothing.
    #[error("{received} of {sent} texts arrived")]
    Lost {
        /// Texts sent.
        sent: u32,
        /// Texts the other client delivered.
        received: u32,
    },
}

fn entry(key: &IdentityKey) -> DirectoryEntry {
    let public_key = key.public_key();
    DirectoryEntry {
        member: public_key.member_id(),
        public_key,
        display_name: "bench".into(),
        categories: vec!["bench".into()],
        online: true,
    }
}

/// Moves outputs between the two clients until nothing moves (commits accepted at once: nobody competes);
/// counts the texts the second client received.
fn pump(clients: &mut [Client; 2], received: &mut u32) {
    loop {
        let mut moved = false;
        for i in 0..2 {
            let from = clients[i].member();
            while let Some(out) = clients[i].poll_output() {
                moved = true;
                match out {
                    Output::Relay { body, .. } | Output::Channel { bytes: body, .. } => {
                        clients[1 - i].handle_envelope(from, &body, Path::Relay, 0);
                    }
                    Output::Commit { token, to, body, .. } => {
                        if !to.is_empty() {
                            clients[1 - i].handle_envelope(from, &body, Path::Relay, 0);
                        }
                        clients[i].commit_accepted(token);
                    }
                    // No bubble here keeps KeyPackages: neither is made.
                    Output::PublishKeyPackage { .. } | Output::ClaimKeyPackage { .. } => {}
                }
            }
            while let Some(event) = clients[i].poll_event() {
                if i == 1 && matches!(event, crate::Event::Message { .. }) {
                    *received += 1;
                }
            }
        }
        if !moved {
            return;
        }
    }
}

/// Microseconds per message (encrypt + decrypt) for `n` texts of `bytes` bytes and their receipts. `now_ms` is
/// the edge's clock in milliseconds (`Instant` natively, `Date.now()` in a browser); only the messages are timed,
/// not the conversation's set-up.
pub fn message_cost(n: u32, bytes: usize, now_ms: &mut dyn FnMut() -> f64) -> Result<f64, BenchError> {
    let key = || IdentityKey::generate().map_err(|e| BenchError::Key(e.to_string()));
    let (a, b) = (key()?, key()?);
    let mut clients = [Client::new(&a), Client::new(&b)];
    clients[0].set_directory([entry(&b)]);
    clients[1].set_directory([entry(&a)]);
    let peer = b.public_key().member_id();
    let mut received = 0;
    clients[0].start_direct(peer)?;
    pump(&mut clients, &mut received);
    let conversation = clients[0].direct_conversation(peer).ok_or(BenchError::NotReady)?;
    let text: String = "a typical message, ".chars().cycle().take(bytes).collect();
    let (start, before) = (now_ms(), received);
    for _ in 0..n {
        clients[0].send_text(conversation, &text)?;
        pump(&mut clients, &mut received);
    }
    let elapsed = now_ms() - start;
    if received - before != n {
        return Err(BenchError::Lost { sent: n, received: received - before });
    }
    Ok(elapsed * 1000.0 / f64::from(2 * n.max(1)))
}

/// Microseconds per 16 KiB file chunk, each side of a transfer, and what the receiver's part is made of.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChunkCost {
    /// The sender: a chunk read into a frame (hash for the nonce check, ChaCha20-Poly1305 seal, frame).
    pub seal: f64,
    /// The receiver: a frame opened (parse, ChaCha20-Poly1305 open, the file's running SHA-256, copies).
    pub open: f64,
    /// SHA-256 of one chunk alone.
    pub sha256: f64,
}

/// What one chunk of a file transfer costs, timed over `n` chunks of the default size through the real
/// [`crate::files`] state machines (one sender, one receiver, acknowledgements handed over in memory). Random
/// key, zero-filled content; nothing stored or sent.
pub fn chunk_cost(n: u32, now_ms: &mut dyn FnMut() -> f64) -> Result<ChunkCost, crate::files::FileError> {
    use crate::files::{FileHasher, FileKey, IncomingTransfer, Opened, OutgoingTransfer, TransferConfig, TransferId};

    let config = TransferConfig::default();
    let n = n.max(1);
    let chunk = vec![0x5au8; config.chunk_size as usize];
    let size = u64::from(n) * u64::from(config.chunk_size);
    let mut hasher = FileHasher::new();
    for _ in 0..n {
        hasher.update(&chunk);
    }
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(key.as_mut()).map_err(|e| crate::files::FileError::Random(e.to_string()))?;
    let key = FileKey::new(key);
    let mut out = OutgoingTransfer::new(TransferId::random()?, "bench", size, hasher.finalize(), &key, &config)?;
    let mut inc = IncomingTransfer::new(out.offer().clone(), &key, &config)?;
    out.on_accept(inc.accept())?;
    let (mut seal, mut open) = (0.0, 0.0);
    let mut frames = Vec::with_capacity(config.window as usize);
    loop {
        let start = now_ms();
        while let Some(want) = out.next_chunk() {
            frames.push(out.seal(want.index, &chunk[..want.len as usize])?);
        }
        seal += now_ms() - start;
        if frames.is_empty() {
            break;
        }
        let start = now_ms();
        let mut acks = Vec::new();
        for frame in frames.drain(..) {
            if let Opened::Chunk(received) = inc.open(&frame)? {
                acks.extend(received.ack);
            }
        }
        open += now_ms() - start;
        for ack in acks {
            out.on_ack(ack)?;
        }
    }
    let start = now_ms();
    for _ in 0..n {
        std::hint::black_box(FileHasher::digest(std::hint::black_box(&chunk)));
    }
    let sha256 = now_ms() - start;
    let per = |ms: f64| ms * 1000.0 / f64::from(n);
    Ok(ChunkCost { seal: per(seal), open: per(open), sha256: per(sha256) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_time_only_while_messages_flow() {
        // A clock that advances 1 ms per reading: two readings around the loop, whatever n is.
        let mut t = 0.0;
        let mut clock = || {
            t += 1.0;
            t
        };
        let us = message_cost(3, 1024, &mut clock).expect("bench runs");
        assert!((us - 1000.0 / 6.0).abs() < 1e-9, "{us}");
    }

    #[test]
    fn a_file_chunk_is_sealed_and_opened_and_timed() {
        let mut t = 0.0;
        let mut clock = || {
            t += 1.0;
            t
        };
        // 40 chunks with a window of 64: one round of sealing, one of opening, one of hashing, then the
        // empty round that ends it (two more readings for seal).
        let cost = chunk_cost(40, &mut clock).expect("bench runs");
        assert!((cost.open - 1000.0 / 40.0).abs() < 1e-9, "{cost:?}");
        assert!((cost.seal - 2000.0 / 40.0).abs() < 1e-9, "{cost:?}");
        assert!((cost.sha256 - 1000.0 / 40.0).abs() < 1e-9, "{cost:?}");
    }
}
