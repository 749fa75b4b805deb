//! PeerBubble wire protocol: identity keys and signatures, signaling v1 frames, their strict codec and limits.
//!
//! This crate owns the bytes that cross the network between a member's client and a bubble-server. It performs
//! no IO and builds for `wasm32-unknown-unknown`, so the browser client and the native peer share it with the
//! server. It must never hold anything but a member's *own* secret key, and it never interprets envelope
//! bodies: those are end-to-end encrypted bytes that only members can read.
//!
//! The protocol is described for implementers in `docs/protocol.md`; every frame, error code and limit there
//! is defined here.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod codec;
pub mod directory;
pub mod enroll;
pub mod error_code;
pub mod frame;
pub mod health;
pub mod identity;
pub mod limits;
pub mod opaque;
pub mod policy;
pub mod visibility;

pub use codec::{CodecError, decode_client_frame, decode_server_frame, encode_frame};
pub use enroll::{EnrollError, EnrollRequest, Enrolled, Invite};
pub use error_code::ErrorCode;
pub use frame::{
    ClientFrame, DirectoryEntry, IceServer, Recipients, RecipientsError, ServerFrame, SessionId, auth_message,
    encode_deliver, encode_deliver_seq, enroll_message,
};
pub use identity::{
    IdentityError, IdentityKey, MemberId, PublicKey, Purpose, Signature, key_fingerprint, safety_number,
};
pub use limits::Limits;
pub use opaque::{GroupId, Nonce, Opaque, OpaqueError};
pub use policy::BubblePolicy;

/// The signaling protocol version this crate speaks. It is also the path segment: `/v1/signal`.
pub const PROTOCOL_VERSION: u16 = 1;
