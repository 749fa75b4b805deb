//! Signaling v1 frames. Every frame is one WebSocket text message holding one JSON object whose `type` field
//! names the frame. Unknown types, unknown fields, duplicate fields and trailing data are refused.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use crate::identity::{MemberId, PublicKey, Signature};
use crate::limits::{Limits, MAX_COMMIT_RECIPIENTS};
use crate::opaque::{GroupId, Nonce, Opaque};

/// One session of a member (a tab or a device), numbered by the server, unique per server run.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Frames a client sends.
// Frames are short-lived values, one per message; boxing the key would cost an allocation per `auth`.
#[allow(clippy::large_enum_variant)]
// Decoded through `WireClientFrame`: serde's internally tagged enums buffer every field (the whole envelope body
// included) before choosing the variant; the flat form parses each field once, into its final type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields, try_from = "WireClientFrame")]
pub enum ClientFrame {
    /// Answer to `challenge`: proves possession of the identity key.
    Auth {
        /// The member's identity public key.
        public_key: PublicKey,
        /// The nonce from `challenge`, echoed.
        nonce: Nonce,
        /// Signature for [`crate::Purpose::SignalAuth`] over [`auth_message`].
        signature: Signature,
    },
    /// Relay an envelope to a member (every session of it, or one).
    Send {
        /// Client-chosen id echoed in `ack` or `error`.
        id: u64,
        /// Recipient member.
        to: MemberId,
        /// Only this session of the recipient; absent means all of its sessions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_session: Option<SessionId>,
        /// Optional; if present it must be the authenticated member, else `spoofed_sender`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<MemberId>,
        /// End-to-end-encrypted bytes.
        body: Opaque,
    },
    /// Keep-alive; answered by `pong`.
    Ping {
        /// Echoed in `pong`.
        id: u64,
    },
    /// An MLS commit (RFC 9420) for the server to order: the first commit for an epoch of a group wins and is
    /// relayed to `to`; any other is answered `commit_conflict`.
    Commit {
        /// Client-chosen id echoed in `ack` or `error`.
        id: u64,
        /// The MLS group id.
        group: GroupId,
        /// The epoch the commit was made in: the group's current epoch at the committer. Below `u64::MAX`.
        epoch: u64,
        /// The members to relay the commit to (never the sender itself).
        to: Recipients,
        /// The end-to-end-encrypted commit, relayed like a `send` body.
        body: Opaque,
    },
    /// The envelopes the server kept while this member was away (`deliver` with `seq`, and `gap`) up to and
    /// including `upto` are safely handled: the server deletes them. Send it only once the state they changed
    /// is saved; what is not acknowledged is delivered again on the next connection.
    Received {
        /// The highest `seq` handled.
        upto: u64,
    },
    /// Publishes one of this member's own MLS KeyPackages (public data, signed by its identity) so that others
    /// can add it to a group while it is away; the Welcome then waits in its mailbox. A one-time KeyPackage is
    /// handed out once; a last-resort one (RFC 9420's `last_resort` extension) replaces the previous one and is
    /// handed out when no one-time KeyPackage is left. Not answered, unless refused (`mailbox_full`). Only
    /// bubbles with a mailbox keep KeyPackages (they say so with `key_package_stock` after the directory).
    PublishKeyPackage {
        /// The TLS-serialized KeyPackage, at most [`crate::limits::MAX_KEY_PACKAGE_BYTES`].
        key_package: Opaque,
        /// Whether it is the member's last-resort KeyPackage.
        last_resort: bool,
    },
    /// Asks for a KeyPackage of `member` (who must be in the asker's directory), to add it to a group while it
    /// is away. Answered by `claimed_key_package` with the same id.
    ClaimKeyPackage {
        /// Client-chosen id echoed in `claimed_key_package` or `error`.
        id: u64,
        /// Whose KeyPackage.
        member: MemberId,
    },
}

/// The recipients of a `commit`: at most [`MAX_COMMIT_RECIPIENTS`] members, no duplicates, in the sender's
/// order. Possibly empty (a new group's first commit has nobody to tell yet).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Recipients(Vec<MemberId>);

/// Why a list of commit recipients was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipientsError {
    /// More than [`MAX_COMMIT_RECIPIENTS`] members.
    #[error("a commit may name at most {MAX_COMMIT_RECIPIENTS} recipients in `to`")]
    TooMany,
    /// A member is named twice.
    #[error("a commit names a recipient twice in `to`")]
    Repeated,
}

impl Recipients {
    /// Checks the count and that no member is named twice.
    pub fn new(members: Vec<MemberId>) -> Result<Self, RecipientsError> {
        if members.len() > MAX_COMMIT_RECIPIENTS {
            return Err(RecipientsError::TooMany);
        }
        let mut sorted = members.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(RecipientsError::Repeated);
        }
        Ok(Self(members))
    }

    /// The members, in the sender's order.
    pub fn as_slice(&self) -> &[MemberId] {
        &self.0
    }
}

impl TryFrom<Vec<MemberId>> for Recipients {
    type Error = RecipientsError;
    fn try_from(members: Vec<MemberId>) -> Result<Self, Self::Error> {
        Self::new(members)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ClientKind {
    Auth,
    Send,
    Ping,
    Commit,
    Received,
    PublishKeyPackage,
    ClaimKeyPackage,
}

/// `to` as sent: one member id (`send`) or a list of them (`commit`); which one a type allows is checked by
/// [`ClientFrame`]'s `TryFrom`. A visitor rather than an untagged enum: serde's untagged enums buffer the value
/// and replace every error (wrong JSON type, bad member id) by one vague message.
enum WireTo {
    One(MemberId),
    Many(Vec<MemberId>),
}

impl<'de> Deserialize<'de> for WireTo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WireTo;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member id or a list of member ids")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<WireTo, E> {
                text.parse().map(WireTo::One).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<WireTo, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = seq.next_element::<MemberId>()? {
                    // Stop early: a longer list is refused anyway.
                    if members.len() == MAX_COMMIT_RECIPIENTS {
                        return Err(serde::de::Error::custom(RecipientsError::TooMany));
                    }
                    members.push(member);
                }
                Ok(WireTo::Many(members))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Every field any client frame may have; [`ClientFrame`]'s `TryFrom` checks which ones the type allows.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireClientFrame {
    #[serde(rename = "type")]
    kind: ClientKind,
    id: Option<u64>,
    to: Option<WireTo>,
    to_session: Option<SessionId>,
    from: Option<MemberId>,
    body: Option<Opaque>,
    public_key: Option<PublicKey>,
    nonce: Option<Nonce>,
    signature: Option<Signature>,
    group: Option<GroupId>,
    epoch: Option<u64>,
    upto: Option<u64>,
    key_package: Option<Opaque>,
    last_resort: Option<bool>,
    member: Option<MemberId>,
}

/// A field missing from, or not allowed in, a client frame of a given type. The wording matches serde's own
/// structural errors, which the codec reports as `malformed_frame`.
#[derive(Debug)]
pub struct WireError(String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn required<T>(value: Option<T>, field: &str, kind: &str) -> Result<T, WireError> {
    value.ok_or_else(|| WireError(format!("missing field `{field}` in {kind}")))
}

impl WireClientFrame {
    /// Which fields the frame has, in declaration order.
    fn present(&self) -> [(&'static str, bool); 14] {
        [
            ("id", self.id.is_some()),
            ("to", self.to.is_some()),
            ("to_session", self.to_session.is_some()),
            ("from", self.from.is_some()),
            ("body", self.body.is_some()),
            ("public_key", self.public_key.is_some()),
            ("nonce", self.nonce.is_some()),
            ("signature", self.signature.is_some()),
            ("group", self.group.is_some()),
            ("epoch", self.epoch.is_some()),
            ("upto", self.upto.is_some()),
            ("key_package", self.key_package.is_some()),
            ("last_resort", self.last_resort.is_some()),
            ("member", self.member.is_some()),
        ]
    }

    /// Refuses any field a frame of type `kind` does not have (`allowed` lists those it may have; which of them
    /// it must have is checked by [`required`]).
    fn only(&self, allowed: &[&str], kind: &str) -> Result<(), WireError> {
        match self.present().into_iter().find(|(name, present)| *present && !allowed.contains(name)) {
            Some((field, _)) => Err(WireError(format!("unknown field `{field}` in {kind}"))),
            None => Ok(()),
        }
    }
}

/// The wording of serde's own wrong-type errors (reported as `malformed_frame`).
fn wrong_type(found: &str, expected: &str, kind: &str) -> WireError {
    WireError(format!("invalid type: {found}, expected {expected} for `to` in {kind}"))
}

impl TryFrom<WireClientFrame> for ClientFrame {
    type Error = WireError;
    fn try_from(w: WireClientFrame) -> Result<Self, Self::Error> {
        match w.kind {
            ClientKind::Auth => {
                let k = "auth";
                w.only(&["public_key", "nonce", "signature"], k)?;
                Ok(ClientFrame::Auth {
                    public_key: required(w.public_key, "public_key", k)?,
                    nonce: required(w.nonce, "nonce", k)?,
                    signature: required(w.signature, "signature", k)?,
                })
            }
            ClientKind::Send => {
                let k = "send";
                w.only(&["id", "to", "to_session", "from", "body"], k)?;
                let to = match required(w.to, "to", k)? {
                    WireTo::One(member) => member,
                    WireTo::Many(_) => return Err(wrong_type("sequence", "a member id", k)),
                };
                Ok(ClientFrame::Send {
                    id: required(w.id, "id", k)?,
                    to,
                    to_session: w.to_session,
                    from: w.from,
                    body: required(w.body, "body", k)?,
                })
            }
            ClientKind::Ping => {
                let k = "ping";
                w.only(&["id"], k)?;
                Ok(ClientFrame::Ping { id: required(w.id, "id", k)? })
            }
            ClientKind::Commit => {
                let k = "commit";
                w.only(&["id", "to", "body", "group", "epoch"], k)?;
                let (id, group, epoch) =
                    (required(w.id, "id", k)?, required(w.group, "group", k)?, required(w.epoch, "epoch", k)?);
                let (to, body) = (required(w.to, "to", k)?, required(w.body, "body", k)?);
                // Structure before values: a wrong JSON type is `malformed_frame`, a bad list `invalid_field`.
                let to = match to {
                    WireTo::Many(members) => members,
                    WireTo::One(_) => return Err(wrong_type("string", "a list of member ids", k)),
                };
                let to = Recipients::new(to).map_err(|e| WireError(e.to_string()))?;
                if epoch == u64::MAX {
                    // Its successor would not fit: no MLS group gets there, and the ledger needs `epoch + 1`.
                    return Err(WireError(format!("epoch must be below {} in commit", u64::MAX)));
                }
                Ok(ClientFrame::Commit { id, group, epoch, to, body })
            }
            ClientKind::Received => {
                let k = "received";
                w.only(&["upto"], k)?;
                Ok(ClientFrame::Received { upto: required(w.upto, "upto", k)? })
            }
            ClientKind::PublishKeyPackage => {
                let k = "publish_key_package";
                w.only(&["key_package", "last_resort"], k)?;
                let key_package = required(w.key_package, "key_package", k)?;
                if key_package.wire_len() > crate::opaque::encoded_len(crate::limits::MAX_KEY_PACKAGE_BYTES) {
                    return Err(WireError(format!(
                        "key_package exceeds {} bytes in {k}",
                        crate::limits::MAX_KEY_PACKAGE_BYTES
                    )));
                }
                Ok(ClientFrame::PublishKeyPackage {
                    key_package,
                    last_resort: required(w.last_resort, "last_resort", k)?,
                })
            }
            ClientKind::ClaimKeyPackage => {
                let k = "claim_key_package";
                w.only(&["id", "member"], k)?;
                Ok(ClientFrame::ClaimKeyPackage {
                    id: required(w.id, "id", k)?,
                    member: required(w.member, "member", k)?,
                })
            }
        }
    }
}

/// Encodes `deliver` without serde: every field is already in a form that needs no escaping (hex id, number,
/// base64url body), and this runs once per relayed envelope. Identical to [`crate::encode_frame`] of
/// [`ServerFrame::Deliver`] (a property test holds them equal).
pub fn encode_deliver(from: &MemberId, from_session: SessionId, body: &Opaque) -> String {
    encode_deliver_seq(from, from_session, body, None)
}

/// [`encode_deliver`] with the mailbox `seq` of a kept envelope.
pub fn encode_deliver_seq(from: &MemberId, from_session: SessionId, body: &Opaque, seq: Option<u64>) -> String {
    let mut out = String::with_capacity(100 + body.wire_len());
    out.push_str(r#"{"type":"deliver","from":""#);
    out.push_str(std::str::from_utf8(&from.to_hex()).unwrap_or_default());
    out.push_str(r#"","from_session":"#);
    out.push_str(&from_session.0.to_string());
    out.push_str(r#","body":""#);
    out.push_str(body.as_wire());
    out.push('"');
    if let Some(seq) = seq {
        out.push_str(r#","seq":"#);
        out.push_str(&seq.to_string());
    }
    out.push('}');
    out
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerFrame {
    /// First frame on every connection.
    Challenge {
        /// Protocol version spoken ([`crate::PROTOCOL_VERSION`]).
        protocol: u16,
        /// The bubble this server serves; part of the signed message.
        bubble: String,
        /// Fresh random nonce for this connection.
        nonce: Nonce,
        /// The nonce must be answered within this time.
        expires_in_ms: u64,
    },
    /// Authentication succeeded. One or more `directory` frames follow at once.
    Welcome {
        /// The authenticated member.
        member: MemberId,
        /// This session's id.
        session: SessionId,
        /// The member's own display name.
        display_name: String,
        /// ICE servers for WebRTC: the bubble's STUN and TURN URLs with TURN credentials for this member
        /// (empty when the bubble runs no TURN relay).
        ice_servers: Vec<IceServer>,
        /// When the TURN credentials in `ice_servers` expire, from now; `ice_servers` frames bring new ones
        /// before that. Absent when there are none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_expires_in_ms: Option<u64>,
        /// The limits this session must respect.
        limits: Limits,
        /// What the bubble requires of this client (absent from older servers: nothing).
        #[serde(default)]
        policy: crate::policy::BubblePolicy,
        /// How long the bubble keeps envelopes for a member with no session (its offline mailbox); absent when
        /// it keeps none (then a `send` to an absent member is refused with `recipient_offline`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mailbox_ttl_ms: Option<u64>,
    },
    /// The bubble's policy changed; it replaces the one of `welcome` at once.
    Policy {
        /// The new policy.
        policy: crate::policy::BubblePolicy,
    },
    /// Fresh TURN credentials, sent before the previous ones expire. They replace those of `welcome` for new
    /// allocations; allocations made with the old ones keep working.
    IceServers {
        /// As in `welcome`.
        ice_servers: Vec<IceServer>,
        /// When these credentials expire, from now.
        expires_in_ms: u64,
    },
    /// The member's visible directory, in `parts` consecutive frames numbered `part` = 0..parts. Once all
    /// parts have arrived they replace the previous directory entirely. Sent after `welcome` and whenever the
    /// slice changes.
    Directory {
        /// This frame's index, from 0.
        part: u32,
        /// How many frames make up this directory.
        parts: u32,
        /// Members this member may see (never itself).
        entries: Vec<DirectoryEntry>,
    },
    /// A visible member came online or went offline.
    Presence {
        /// The member.
        member: MemberId,
        /// Whether it now has at least one session.
        online: bool,
    },
    /// An envelope from another member.
    Deliver {
        /// Sender, as authenticated by the server.
        from: MemberId,
        /// Sender's session, to reply to one tab or device.
        from_session: SessionId,
        /// The end-to-end-encrypted bytes, untouched.
        body: Opaque,
        /// Present when the envelope waited in the bubble's mailbox while this member was away: acknowledge it
        /// with `received` once handled. Increasing within a mailbox.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Envelopes the bubble kept for this member were lost before it came back (their time to live passed, or
    /// its mailbox overflowed). Comes in mailbox order, like a `deliver` with `seq`, and is acknowledged the same
    /// way.
    Gap {
        /// Its place in the mailbox.
        seq: u64,
        /// How many envelopes were lost.
        lost: u64,
        /// The groups whose commits were among them: the member missed epochs and must rejoin these.
        groups: Vec<GroupId>,
    },
    /// A `send` (or `commit`) was accepted and queued to this many sessions.
    Ack {
        /// The `send` id.
        id: u64,
        /// Number of recipient sessions it was queued to.
        sessions: u32,
        /// Number of recipients with no session for whom it waits in the bubble's mailbox ("stored for later").
        #[serde(default, skip_serializing_if = "is_zero")]
        stored: u32,
    },
    /// How many of this member's KeyPackages the bubble keeps for others to add it while it is away: sent once
    /// per session, after the directory, when the bubble keeps KeyPackages (it has a mailbox). The client tops
    /// the stock up to [`crate::limits::KEY_PACKAGES_KEPT`] one-time KeyPackages and one last resort.
    KeyPackageStock {
        /// One-time KeyPackages kept.
        one_time: u32,
        /// Whether a last-resort KeyPackage is kept.
        last_resort: bool,
    },
    /// Answer to `claim_key_package`: one of `member`'s KeyPackages (a one-time one, removed from the stock, or
    /// else its last-resort one), or none when it published none. Check it like any KeyPackage: signed by the
    /// member's key in the directory, in the bubble's ciphersuite.
    ClaimedKeyPackage {
        /// The `claim_key_package` id.
        id: u64,
        /// Whose KeyPackage.
        member: MemberId,
        /// The KeyPackage, absent when the bubble keeps none for `member`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_package: Option<Opaque>,
    },
    /// Answer to `ping`.
    Pong {
        /// The `ping` id.
        id: u64,
    },
    /// Something was refused. If the code is fatal the server closes the connection next.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation (English), never containing envelope bodies.
        message: String,
        /// The id of the `send` or `ping` refused, when there was one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// When to retry, for `rate_limited`, `recipient_congested` and `server_shutdown`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// A member as another member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    /// The member id (derived from `public_key`; clients check it).
    pub member: MemberId,
    /// The member's identity key in this bubble.
    pub public_key: PublicKey,
    /// Display name.
    pub display_name: String,
    /// The member's categories that the viewer is also allowed to know about.
    pub categories: Vec<String>,
    /// Whether the member had a session when this entry was sent (then follow `presence`).
    pub online: bool,
}

/// A STUN/TURN server for RTCPeerConnection, in the browser's `RTCIceServer` shape.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (`expiry:member`), absent for STUN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential (HMAC), absent for STUN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The bytes a client signs (with [`crate::Purpose::SignalAuth`]) to answer a challenge: bound to the bubble,
/// the nonce and the key itself, so that an answer is good for one connection to one bubble only.
pub fn auth_message(bubble: &str, nonce: &Nonce, public_key: &PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + bubble.len() + 32 + 32);
    out.extend_from_slice(&(bubble.len() as u32).to_be_bytes());
    out.extend_from_slice(bubble.as_bytes());
    out.extend_from_slice(nonce.as_bytes());
    out.extend_from_slice(public_key.as_bytes());
    out
}

/// The bytes a new member signs (with [`crate::Purpose::EnrollInvite`]) to redeem an invite: bound to the bubble,
/// the invite (by the SHA-256 of its token) and the key being enrolled. Proves possession of the private key, so
/// nothing but a public key can ever be registered.
pub fn enroll_message(bubble: &str, invite_token: &str, public_key: &PublicKey) -> Vec<u8> {
    use sha2::{Digest as _, Sha256};
    let mut out = Vec::with_capacity(4 + bubble.len() + 32 + 32);
    out.extend_from_slice(&(bubble.len() as u32).to_be_bytes());
    out.extend_from_slice(bubble.as_bytes());
    out.extend_from_slice(&Sha256::digest(invite_token.as_bytes()));
    out.extend_from_slice(public_key.as_bytes());
    out
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
