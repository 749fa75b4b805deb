//! What members say to each other inside MLS application messages: chat, receipts, typing, disappearing
//! timers, call set-up (SDP and ICE candidates, never readable by a server) and file-transfer control.
//! JSON, decoded strictly (unknown fields and types refused), with a limit on every field.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::files::FileControl;
use crate::fingerprint::Fingerprint;

/// Longest chat text, in bytes.
pub const MAX_TEXT: usize = 8 * 1024;
/// Longest SDP, in bytes.
pub const MAX_SDP: usize = 16 * 1024;
/// Longest ICE candidate line, in bytes.
pub const MAX_CANDIDATE: usize = 1024;
/// Longest disappearing timer: 30 days.
pub const MAX_TIMER_SECS: u32 = 30 * 24 * 3600;
/// Most message ids in one receipt.
pub const MAX_RECEIPT_IDS: usize = 256;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 128;

/// A message id, chosen at random by its author (hex on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(pub [u8; 16]);

impl TryFrom<String> for MessageId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        hex16(&s).map(MessageId).ok_or_else(|| "message id must be 32 lowercase hex characters".to_owned())
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> Self {
        hex(&id.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// A call (one RTCPeerConnection set-up), chosen at random by the caller.
pub type CallId = MessageId;

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 lowercase hex characters to 16 bytes.
pub fn hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return None;
    }
    let mut out = [0; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Delivered or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The message reached the recipient's device.
    Delivered,
    /// The recipient showed it.
    Read,
}

/// What the conversation is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum ConversationKind {
    /// A 1:1 conversation (a two-member MLS group).
    Direct,
    /// A named group chat.
    Group {
        /// The name members see.
        name: String,
    },
}

/// Call set-up: the SDP carries the DTLS fingerprint and the ICE candidates (IP addresses), so it travels only
/// MLS-encrypted. `fingerprint` repeats the SDP's `a=fingerprint` value; the receiver checks both are equal and
/// accepts a DTLS connection only with that certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "signal", deny_unknown_fields)]
pub enum CallSignal {
    /// The caller's SDP offer.
    Offer {
        /// The call.
        call: CallId,
        /// The SDP.
        sdp: String,
        /// The caller's DTLS certificate fingerprint, e.g. `sha-256 AB:CD:…`.
        fingerprint: Fingerprint,
    },
    /// The callee's SDP answer.
    Answer {
        /// The call.
        call: CallId,
        /// The SDP.
        sdp: String,
        /// The callee's DTLS certificate fingerprint.
        fingerprint: Fingerprint,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The call.
        call: CallId,
        /// The candidate line.
        candidate: String,
    },
    /// The call ends.
    Hangup {
        /// The call.
        call: CallId,
    },
    /// An audio or video call rings: the member decides ([`CallSignal::Accept`] or [`CallSignal::End`]). Media
    /// then flows on the contact's connection (set up again with tracks, by `offer`/`answer` above).
    Ring {
        /// This media call (not the connection's `call`).
        ring: CallId,
        /// Camera as well as microphone.
        video: bool,
    },
    /// The callee picked up.
    Accept {
        /// The media call.
        ring: CallId,
    },
    /// Either side ends the media call, or the callee declines it.
    End {
        /// The media call.
        ring: CallId,
        /// Why (a closed set: nothing a peer writes reaches the other's screen).
        reason: EndReason,
    },
    /// In a group: the call's caller counted `member`'s join after the call was already full, so `member` is
    /// not in it. Two members taking the last seat at once each count themselves; the others all count the one
    /// the server ordered first, and the caller (never contested: in from the start) says so to the other one.
    Full {
        /// The group's call.
        ring: CallId,
        /// The member whose join came too late.
        member: peerbubble_proto::MemberId,
    },
}

/// Why a media call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Hung up.
    HungUp,
    /// The callee declined.
    Declined,
    /// The callee is in another call.
    Busy,
    /// The bubble does not allow calls.
    NotAllowed,
}

/// One MLS application message's content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", deny_unknown_fields)]
pub enum AppMessage {
    /// Conversation metadata, sent by whoever adds members (new members learn the kind and name from it).
    Meta {
        /// Direct or group, with its name.
        conversation: ConversationKind,
        /// The disappearing-message timer in force, in seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timer_secs: Option<u32>,
    },
    /// A chat message.
    Text {
        /// Its id.
        id: MessageId,
        /// The text.
        text: String,
        /// The author's clock, milliseconds since the Unix epoch.
        sent_at_ms: u64,
        /// Disappears this long after it is received.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_in_secs: Option<u32>,
    },
    /// The author replaces the text of one of its messages.
    Edit {
        /// The message edited.
        id: MessageId,
        /// The new text.
        text: String,
    },
    /// The author deletes one of its messages for everyone.
    Delete {
        /// The message deleted.
        id: MessageId,
    },
    /// Delivery or read receipts.
    Receipt {
        /// The messages.
        ids: Vec<MessageId>,
        /// Delivered or read.
        kind: ReceiptKind,
    },
    /// Typing indicator.
    Typing {
        /// Started (true) or stopped.
        typing: bool,
    },
    /// The conversation's disappearing timer changes (absent: messages stay).
    Timer {
        /// Seconds, or none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timer_secs: Option<u32>,
    },
    /// The author leaves the group; someone should commit its removal.
    Leave,
    /// Call set-up.
    Call(CallSignal),
    /// File-transfer control.
    File(FileControl),
}

/// Shows the length of content instead of the content, in `Debug` output.
pub(crate) struct Redacted(pub usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0)
    }
}

impl fmt::Debug for CallSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallSignal::Offer { call, sdp, fingerprint } => f
                .debug_struct("Offer")
                .field("call", call)
                .field("sdp", &Redacted(sdp.len()))
                .field("fingerprint", fingerprint)
                .finish(),
            CallSignal::Answer { call, sdp, fingerprint } => f
                .debug_struct("Answer")
                .field("call", call)
                .field("sdp", &Redacted(sdp.len()))
                .field("fingerprint", fingerprint)
                .finish(),
            CallSignal::Candidate { call, candidate } => {
                f.debug_struct("Candidate").field("call", call).field("candidate", &Redacted(candidate.len())).finish()
            }
            CallSignal::Hangup { call } => f.debug_struct("Hangup").field("call", call).finish(),
            CallSignal::Ring { ring, video } => {
                f.debug_struct("Ring").field("ring", ring).field("video", video).finish()
            }
            CallSignal::Accept { ring } => f.debug_struct("Accept").field("ring", ring).finish(),
            CallSignal::End { ring, reason } => {
                f.debug_struct("End").field("ring", ring).field("reason", reason).finish()
            }
            CallSignal::Full { ring, member } => {
                f.debug_struct("Full").field("ring", ring).field("member", member).finish()
            }
        }
    }
}

impl fmt::Debug for AppMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppMessage::Meta { conversation, timer_secs } => {
                f.debug_struct("Meta").field("conversation", conversation).field("timer_secs", timer_secs).finish()
            }
            AppMessage::Text { id, text, sent_at_ms, expires_in_secs } => f
                .debug_struct("Text")
                .field("id", id)
                .field("text", &Redacted(text.len()))
                .field("sent_at_ms", sent_at_ms)
                .field("expires_in_secs", expires_in_secs)
                .finish(),
            AppMessage::Edit { id, text } => {
                f.debug_struct("Edit").field("id", id).field("text", &Redacted(text.len())).finish()
            }
            AppMessage::Delete { id } => f.debug_struct("Delete").field("id", id).finish(),
            AppMessage::Receipt { ids, kind } => {
                f.debug_struct("Receipt").field("ids", ids).field("kind", kind).finish()
            }
            AppMessage::Typing { typing } => f.debug_struct("Typing").field("typing", typing).finish(),
            AppMessage::Timer { timer_secs } => f.debug_struct("Timer").field("timer_secs", timer_secs).finish(),
            AppMessage::Leave => f.write_str("Leave"),
            AppMessage::Call(signal) => f.debug_tuple("Call").field(signal).finish(),
            AppMessage::File(control) => f.debug_tuple("File").field(control).finish(),
        }
    }
}

/// Why an application message was refused.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Not JSON of a known message, or unknown fields.
    #[error("malformed application message: {0}")]
    Malformed(String),
    /// A field is over its limit.
    #[error("application message field `{0}` is over its limit")]
    TooLong(&'static str),
}

impl AppMessage {
    /// Decodes and checks limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let message: AppMessage = serde_json::from_slice(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
        message.check()?;
        Ok(message)
    }

    /// The bytes to encrypt.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks every field's limit.
    pub fn check(&self) -> Result<(), MessageError> {
        let too_long = |ok: bool, field| if ok { Ok(()) } else { Err(MessageError::TooLong(field)) };
        match self {
            AppMessage::Meta { conversation, timer_secs } => {
                if let ConversationKind::Group { name } = conversation {
                    too_long(!name.trim().is_empty() && name.len() <= MAX_GROUP_NAME, "name")?;
                }
                too_long(timer_secs.is_none_or(|t| t <= MAX_TIMER_SECS), "timer_secs")
            }
            AppMessage::Text { text, expires_in_secs, .. } => {
                too_long(text.len() <= MAX_TEXT, "text")?;
                too_long(expires_in_secs.is_none_or(|t| t <= MAX_TIMER_SECS), "expires_in_secs")
            }
            AppMessage::Edit { text, .. } => too_long(text.len() <= MAX_TEXT, "text"),
            AppMessage::Receipt { ids, .. } => too_long(ids.len() <= MAX_RECEIPT_IDS, "ids"),
            AppMessage::Timer { timer_secs } => too_long(timer_secs.is_none_or(|t| t <= MAX_TIMER_SECS), "timer_secs"),
            AppMessage::Call(CallSignal::Offer { sdp, .. } | CallSignal::Answer { sdp, .. }) => {
                too_long(sdp.len() <= MAX_SDP, "sdp")
            }
            AppMessage::Call(CallSignal::Candidate { candidate, .. }) => {
                too_long(candidate.len() <= MAX_CANDIDATE, "candidate")
            }
            AppMessage::Delete { .. }
            | AppMessage::Typing { .. }
            | AppMessage::Leave
            | AppMessage::Call(
                CallSignal::Hangup { .. }
                | CallSignal::Ring { .. }
                | CallSignal::Accept { .. }
                | CallSignal::End { .. }
                | CallSignal::Full { .. },
            )
            | AppMessage::File(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_and_bounded() {
        let m = AppMessage::Text { id: MessageId([1; 16]), text: "hi".into(), sent_at_ms: 5, expires_in_secs: None };
        assert_eq!(AppMessage::decode(&m.encode()).ok(), Some(m));
        assert!(AppMessage::decode(br#"{"type":"typing","typing":true,"extra":1}"#).is_err());
        assert!(AppMessage::decode(br#"{"type":"shout"}"#).is_err());
        let long = AppMessage::Edit { id: MessageId([1; 16]), text: "x".repeat(MAX_TEXT + 1) };
        assert!(matches!(AppMessage::decode(&long.encode()), Err(MessageError::TooLong("text"))));
        assert!(AppMessage::decode(br#"{"type":"delete","id":"ABCDEF00000000000000000000000000"}"#).is_err());
    }
}
