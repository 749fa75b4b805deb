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
}
