//! Envelopes: the bytes members put in a signaling `send`/`commit` body, or on a DataChannel. The server relays
//! them unread; apart from KeyPackages (public, signed by their owner) everything inside is MLS ciphertext.
//!
//! ```text
//! envelope = version:u8 (1) ‖ kind:u8 ‖ fields
//!   0x01 key_package_request  request:[16]
//!   0x02 key_package          request:[16] ‖ len:u32 ‖ MLS KeyPackage (TLS)
//!   0x03 welcome              len:u32 ‖ MLS Welcome message (TLS)
//!   0x04 mls                  len:u32 ‖ MLS PrivateMessage (TLS): application data or a commit
//!   0x05 rejoin               len:u8 ‖ group id ‖ len:u32 ‖ MLS KeyPackage (TLS)
//! ```
//! Parsing is strict: exact lengths, no trailing bytes, every length within its limit.

/// Envelope format version.
pub const VERSION: u8 = 1;
/// The largest MLS message or KeyPackage an envelope may carry. Relayed envelopes are further limited by the
/// signaling `max_body_bytes` (32 KiB); DataChannel messages by [`MAX_CHANNEL_MESSAGE`].
pub const MAX_FIELD: usize = 60 * 1024;
/// The largest DataChannel message a peer sends or accepts.
pub const MAX_CHANNEL_MESSAGE: usize = 64 * 1024;
/// The largest MLS group id accepted.
pub const MAX_GROUP_ID: usize = 32;

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// "Send me a fresh KeyPackage": the first step of a conversation or of being added to a group.
    KeyPackageRequest {
        /// Random id echoed in the answer.
        request: [u8; 16],
    },
    /// A fresh KeyPackage, answering a request.
    KeyPackage {
        /// The request answered.
        request: [u8; 16],
        /// TLS-serialised MLS KeyPackage.
        key_package: Vec<u8>,
    },
    /// An MLS Welcome adding the recipient to a group.
    Welcome {
        /// TLS-serialised MLS message holding the Welcome.
        welcome: Vec<u8>,
    },
    /// An MLS message: application data (chat, call set-up, file control) or a commit.
    Mls {
        /// TLS-serialised MLS message.
        message: Vec<u8>,
    },
    /// "I missed commits of this group; add me again with this KeyPackage."
    Rejoin {
        /// The MLS group id.
        group: Vec<u8>,
        /// A fresh KeyPackage of the sender.
        key_package: Vec<u8>,
    },
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The envelope is shorter than its fields say.
    #[error("envelope truncated")]
    Truncated,
    /// Bytes follow the last field.
    #[error("trailing bytes after the envelope")]
    Trailing,
    /// Another envelope version; the sender runs newer or older software.
    #[error("unsupported envelope version {0}")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    /// A field is empty or over its limit.
    #[error("envelope field of {0} bytes is empty or over its limit")]
    FieldSize(usize),
}

const KIND_KP_REQUEST: u8 = 1;
const KIND_KP: u8 = 2;
const KIND_WELCOME: u8 = 3;
const KIND_MLS: u8 = 4;
const KIND_REJOIN: u8 = 5;

impl Envelope {
    /// The envelope's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            Envelope::KeyPackageRequest { request } => {
                out.push(KIND_KP_REQUEST);
                out.extend_from_slice(request);
            }
            Envelope::KeyPackage { request, key_package } => {
                out.push(KIND_KP);
                out.extend_from_slice(request);
                put_long(&mut out, key_package);
            }
            Envelope::Welcome { welcome } => {
                out.push(KIND_WELCOME);
                put_long(&mut out, welcome);
            }
            Envelope::Mls { message } => {
                out.push(KIND_MLS);
                put_long(&mut out, message);
            }
            Envelope::Rejoin { group, key_package } => {
                out.push(KIND_REJOIN);
                out.push(u8::try_from(group.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(group);
                put_long(&mut out, key_package);
            }
        }
        out
    }

    /// Decodes an envelope strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(bytes);
        let version = r.byte()?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let envelope = match r.byte()? {
            KIND_KP_REQUEST => Envelope::KeyPackageRequest { request: r.array()? },
            KIND_KP => Envelope::KeyPackage { request: r.array()?, key_package: r.long()? },
            KIND_WELCOME => Envelope::Welcome { welcome: r.long()? },
            KIND_MLS => Envelope::Mls { message: r.long()? },
            KIND_REJOIN => {
                let n = usize::from(r.byte()?);
                if n == 0 || n > MAX_GROUP_ID {
                    return Err(WireError::FieldSize(n));
                }
                Envelope::Rejoin { group: r.take(n)?.to_vec(), key_package: r.long()? }
            }
            other => return Err(WireError::Kind(other)),
        };
        if !r.0.is_empty() {
            return Err(WireError::Trailing);
        }
        Ok(envelope)
    }
}

fn put_long(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(field);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn byte(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn long(&mut self) -> Result<Vec<u8>, WireError> {
        let n = u32::from_be_bytes(self.array()?) as usize;
        if n == 0 || n > MAX_FIELD {
            return Err(WireError::FieldSize(n));
        }
        Ok(self.take(n)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_strictness() {
        let all = [
            Envelope::KeyPackageRequest { request: [7; 16] },
            Envelope::KeyPackage { request: [1; 16], key_package: vec![1, 2, 3] },
            Envelope::Welcome { welcome: vec![9; 100] },
            Envelope::Mls { message: vec![4; 10] },
            Envelope::Rejoin { group: vec![5; 16], key_package: vec![6; 7] },
        ];
        for e in all {
            let bytes = e.encode();
            assert_eq!(Envelope::decode(&bytes), Ok(e));
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Envelope::decode(&longer), Err(WireError::Trailing));
            assert_eq!(Envelope::decode(&bytes[..bytes.len() - 1]), Err(WireError::Truncated));
        }
        assert_eq!(Envelope::decode(&[2, 1]), Err(WireError::Version(2)));
        assert_eq!(Envelope::decode(&[1, 9]), Err(WireError::Kind(9)));
        assert_eq!(Envelope::decode(&[1, KIND_MLS, 0, 0, 0, 0]), Err(WireError::FieldSize(0)));
        assert_eq!(Envelope::decode(&[1, KIND_MLS, 0, 1, 0, 1]), Err(WireError::FieldSize(65537)));
        assert_eq!(Envelope::decode(&[1, KIND_REJOIN, 33]), Err(WireError::FieldSize(33)));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(e) = Envelope::decode(&bytes) {
                prop_assert_eq!(e.encode(), bytes);
            }
        }
    }
}
