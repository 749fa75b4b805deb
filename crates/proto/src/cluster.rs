//! What a bubble's replicas tell each other about presence over NATS: which members have sessions on which
//! replica. Never content: envelopes travel between replicas as the `deliver` frames members get, bodies
//! opaque; this format carries only member ids, replica numbers and sequence numbers.
//!
//! Binary, big-endian, one message per NATS message:
//! - `H` replica:u32 seq:u64 — heartbeat, every second: the replica is alive and has sent `seq` changes;
//! - `C` replica:u32 seq:u64 member:16 online:u8 — change number `seq`: `member` has (1) or no longer has (0)
//!   sessions on the replica;
//! - `L` replica:u32 — the replica is leaving (graceful shutdown): drop its members now;
//! - `S` replica:u32 seq:u64 member:16 * n — snapshot: every member with sessions on the replica after change
//!   `seq` (the answer to a replica that missed changes or just joined).
//!
//! Envelopes for members on another replica travel in batches ([`encode_forward`], [`decode_forwards`]): per
//! envelope, id:u64 session:u64 (0: every session) n:u16 member:16 * n length:u32 and the `deliver` frame the
//! members get, bytes untouched. The answers come back in batches too ([`encode_answer`], [`decode_answers`]):
//! id:u64 sessions:u32 congested:u8.

use crate::MemberId;

/// Most members a snapshot carries (16 bytes each: 1 MiB, the NATS server's default payload limit, minus
/// room for headers).
pub const MAX_SNAPSHOT_MEMBERS: usize = 60_000;

/// A presence message between replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceMessage {
    /// The replica is alive and has sent changes up to `seq`.
    Heartbeat {
        /// The sending replica.
        replica: u32,
        /// Its last change number.
        seq: u64,
    },
    /// Change number `seq` of the replica's members.
    Change {
        /// The sending replica.
        replica: u32,
        /// The change number (consecutive from 1).
        seq: u64,
        /// The member.
        member: MemberId,
        /// Whether it now has sessions on the replica.
        online: bool,
    },
    /// The replica is shutting down.
    Leaving {
        /// The sending replica.
        replica: u32,
    },
    /// Every member with sessions on the replica, after change `seq`.
    Snapshot {
        /// The sending replica.
        replica: u32,
        /// The last change it reflects.
        seq: u64,
        /// The members.
        members: Vec<MemberId>,
    },
}

/// A presence message that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClusterWireError {
    /// Empty, or of no known kind.
    #[error("unknown cluster presence message kind")]
    UnknownKind,
    /// Shorter or longer than its kind says.
    #[error("cluster presence message of the wrong length")]
    Length,
    /// An `online` byte other than 0 or 1.
    #[error("cluster presence change with an invalid online flag")]
    Flag,
}

impl PresenceMessage {
    /// The sending replica.
    pub fn replica(&self) -> u32 {
        match self {
            Self::Heartbeat { replica, .. }
            | Self::Change { replica, .. }
            | Self::Leaving { replica }
            | Self::Snapshot { replica, .. } => *replica,
        }
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        match self {
            Self::Heartbeat { replica, seq } => {
                out.push(b'H');
                out.extend_from_slice(&replica.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Self::Change { replica, seq, member, online } => {
                out.push(b'C');
                out.extend_from_slice(&replica.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(member.as_bytes());
                out.push(u8::from(*online));
            }
            Self::Leaving { replica } => {
                out.push(b'L');
                out.extend_from_slice(&replica.to_be_bytes());
            }
            Self::Snapshot { replica, seq, members } => {
                out.reserve(members.len() * 16);
                out.push(b'S');
                out.extend_from_slice(&replica.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                for member in members.iter().take(MAX_SNAPSHOT_MEMBERS) {
                    out.extend_from_slice(member.as_bytes());
                }
            }
        }
        out
    }

    /// Reads one message; anything malformed is refused whole.
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterWireError> {
        let (&kind, rest) = bytes.split_first().ok_or(ClusterWireError::UnknownKind)?;
        let u32_at = |at: usize| rest.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
        let u64_at = |at: usize| rest.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        let member_at =
            |at: usize| rest.get(at..at + 16).and_then(|b| <[u8; 16]>::try_from(b).ok()).map(MemberId::from_bytes);
        match kind {
            b'H' if rest.len() == 12 => Ok(Self::Heartbeat {
                replica: u32_at(0).ok_or(ClusterWireError::Length)?,
                seq: u64_at(4).ok_or(ClusterWireError::Length)?,
            }),
            b'C' if rest.len() == 29 => Ok(Self::Change {
                replica: u32_at(0).ok_or(ClusterWireError::Length)?,
                seq: u64_at(4).ok_or(ClusterWireError::Length)?,
                member: member_at(12).ok_or(ClusterWireError::Length)?,
                online: match rest[28] {
                    0 => false,
                    1 => true,
                    _ => return Err(ClusterWireError::Flag),
                },
            }),
            b'L' if rest.len() == 4 => Ok(Self::Leaving { replica: u32_at(0).ok_or(ClusterWireError::Length)? }),
            b'S' if rest.len() >= 12
                && (rest.len() - 12) % 16 == 0
                && (rest.len() - 12) / 16 <= MAX_SNAPSHOT_MEMBERS =>
            {
                let members = rest[12..]
                    .chunks_exact(16)
                    .map(|c| <[u8; 16]>::try_from(c).map(MemberId::from_bytes).map_err(|_| ClusterWireError::Length))
                    .collect::<Result<_, _>>()?;
                Ok(Self::Snapshot {
                    replica: u32_at(0).ok_or(ClusterWireError::Length)?,
                    seq: u64_at(4).ok_or(ClusterWireError::Length)?,
                    members,
                })
            }
            b'H' | b'C' | b'L' | b'S' => Err(ClusterWireError::Length),
            _ => Err(ClusterWireError::UnknownKind),
        }
    }
}

/// Most recipients one forwarded envelope names.
pub const MAX_FORWARD_RECIPIENTS: usize = 4096;
/// Largest frame one forwarded envelope carries.
pub const MAX_FORWARD_FRAME: usize = 1 << 20;

/// One envelope forwarded to another replica, borrowed from its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward<'a> {
    /// The forwarding replica's id for it, echoed in the answer.
    pub id: u64,
    /// Only this session of the recipients (none: every session).
    pub to_session: Option<u64>,
    /// The recipients on the receiving replica.
    pub to: Vec<MemberId>,
    /// The `deliver` frame, as members get it.
    pub frame: &'a [u8],
}

/// Appends one forwarded envelope to a batch.
pub fn encode_forward(out: &mut Vec<u8>, id: u64, to_session: Option<u64>, to: &[MemberId], frame: &[u8]) {
    let to = &to[..to.len().min(MAX_FORWARD_RECIPIENTS)];
    out.reserve(8 + 8 + 2 + 16 * to.len() + 4 + frame.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&to_session.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&(to.len() as u16).to_be_bytes());
    for member in to {
        out.extend_from_slice(member.as_bytes());
    }
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

/// Reads a batch of forwarded envelopes; anything malformed refuses the whole batch.
pub fn decode_forwards(mut bytes: &[u8]) -> Result<Vec<Forward<'_>>, ClusterWireError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], ClusterWireError> {
        if bytes.len() < n {
            return Err(ClusterWireError::Length);
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let id = u64::from_be_bytes(take(&mut bytes, 8)?.try_into().map_err(|_| ClusterWireError::Length)?);
        let session = u64::from_be_bytes(take(&mut bytes, 8)?.try_into().map_err(|_| ClusterWireError::Length)?);
        let n = usize::from(u16::from_be_bytes(take(&mut bytes, 2)?.try_into().map_err(|_| ClusterWireError::Length)?));
        if n == 0 || n > MAX_FORWARD_RECIPIENTS {
            return Err(ClusterWireError::Length);
        }
        let to = take(&mut bytes, 16 * n)?
            .chunks_exact(16)
            .map(|c| <[u8; 16]>::try_from(c).map(MemberId::from_bytes).map_err(|_| ClusterWireError::Length))
            .collect::<Result<Vec<_>, _>>()?;
        let len = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().map_err(|_| ClusterWireError::Length)?) as usize;
        if len == 0 || len > MAX_FORWARD_FRAME {
            return Err(ClusterWireError::Length);
        }
        let frame = take(&mut bytes, len)?;
        out.push(Forward { id, to_session: (session != 0).then_some(session), to, frame });
    }
    Ok(out)
}

/// What a replica answers for one forwarded envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardAnswer {
    /// The forwarding replica's id for it.
    pub id: u64,
    /// Sessions it was queued to.
    pub sessions: u32,
    /// A recipient session was over its budget.
    pub congested: bool,
}

/// Appends one answer to a batch.
pub fn encode_answer(out: &mut Vec<u8>, answer: ForwardAnswer) {
    out.extend_from_slice(&answer.id.to_be_bytes());
    out.extend_from_slice(&answer.sessions.to_be_bytes());
    out.push(u8::from(answer.congested));
}

/// Reads a batch of answers; anything malformed refuses the whole batch.
pub fn decode_answers(bytes: &[u8]) -> Result<Vec<ForwardAnswer>, ClusterWireError> {
    if !bytes.len().is_multiple_of(13) {
        return Err(ClusterWireError::Length);
    }
    bytes
        .chunks_exact(13)
        .map(|c| {
            let id = u64::from_be_bytes(c[..8].try_into().map_err(|_| ClusterWireError::Length)?);
            let sessions = u32::from_be_bytes(c[8..12].try_into().map_err(|_| ClusterWireError::Length)?);
            let congested = match c[12] {
                0 => false,
                1 => true,
                _ => return Err(ClusterWireError::Flag),
            };
            Ok(ForwardAnswer { id, sessions, congested })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(n: u8) -> MemberId {
        MemberId::from_bytes([n; 16])
    }

    #[test]
    fn every_kind_round_trips() {
        for message in [
            PresenceMessage::Heartbeat { replica: 7, seq: 9 },
            PresenceMessage::Change { replica: 1 << 19, seq: u64::MAX, member: member(3), online: true },
            PresenceMessage::Change { replica: 1, seq: 1, member: member(4), online: false },
            PresenceMessage::Leaving { replica: 12 },
            PresenceMessage::Snapshot { replica: 5, seq: 0, members: vec![] },
            PresenceMessage::Snapshot { replica: 5, seq: 3, members: vec![member(1), member(2)] },
        ] {
            assert_eq!(PresenceMessage::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let change = PresenceMessage::Change { replica: 1, seq: 1, member: member(4), online: true }.encode();
        assert_eq!(PresenceMessage::decode(&[]), Err(ClusterWireError::UnknownKind));
        assert_eq!(PresenceMessage::decode(b"Xabc"), Err(ClusterWireError::UnknownKind));
        assert_eq!(PresenceMessage::decode(&change[..change.len() - 1]), Err(ClusterWireError::Length));
        let mut flag = change.clone();
        *flag.last_mut().unwrap_or(&mut 0) = 2;
        assert_eq!(PresenceMessage::decode(&flag), Err(ClusterWireError::Flag));
        let mut snapshot = PresenceMessage::Snapshot { replica: 1, seq: 1, members: vec![member(1)] }.encode();
        snapshot.push(0);
        assert_eq!(PresenceMessage::decode(&snapshot), Err(ClusterWireError::Length));
    }

    #[test]
    fn forward_and_answer_batches_round_trip_and_refuse_damage() {
        let mut batch = Vec::new();
        encode_forward(&mut batch, 1, None, &[member(1)], b"{\"type\":\"deliver\"}");
        encode_forward(&mut batch, 2, Some(7 << 32 | 3), &[member(2), member(3)], b"x");
        let got = decode_forwards(&batch).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id, got[0].to_session, got[0].to.clone()), (1, None, vec![member(1)]));
        assert_eq!(got[0].frame, b"{\"type\":\"deliver\"}");
        assert_eq!((got[1].to_session, got[1].to.len(), got[1].frame), (Some(7 << 32 | 3), 2, &b"x"[..]));
        assert_eq!(decode_forwards(&batch[..batch.len() - 1]), Err(ClusterWireError::Length));
        assert_eq!(decode_forwards(&[]), Ok(vec![]));
        let mut answers = Vec::new();
        encode_answer(&mut answers, ForwardAnswer { id: 9, sessions: 2, congested: true });
        encode_answer(&mut answers, ForwardAnswer { id: 10, sessions: 0, congested: false });
        assert_eq!(decode_answers(&answers).unwrap()[0], ForwardAnswer { id: 9, sessions: 2, congested: true });
        answers.push(0);
        assert_eq!(decode_answers(&answers), Err(ClusterWireError::Length));
    }

    proptest! {
        #[test]
        fn forwards_and_answers_from_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(forwards) = decode_forwards(&bytes) {
                let mut again = Vec::new();
                for f in &forwards {
                    encode_forward(&mut again, f.id, f.to_session, &f.to, f.frame);
                }
                prop_assert_eq!(again, bytes.clone());
            }
            if let Ok(answers) = decode_answers(&bytes) {
                let mut again = Vec::new();
                for a in answers {
                    encode_answer(&mut again, a);
                }
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(message) = PresenceMessage::decode(&bytes) {
                prop_assert_eq!(message.encode(), bytes);
            }
        }
    }
}
