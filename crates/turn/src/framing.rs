//! Splitting a TCP or TLS byte stream into STUN messages and ChannelData frames (RFC 8656 §12.5, RFC 8489
//! §6.2.2): the first two bits tell which, the length field tells how long. Anything else ends the
//! connection, because a stream that lost its framing cannot be resynchronised.

/// Why a stream cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The first byte is neither a STUN message (`0b00`) nor ChannelData (`0b01`).
    #[error("neither a STUN message nor ChannelData (first byte {0:#04x})")]
    UnknownFrame(u8),
    /// A STUN header without the magic cookie of RFC 5389 and later.
    #[error("STUN message without the magic cookie")]
    NoMagicCookie,
    /// A STUN message length that is not a multiple of 4.
    #[error("STUN message length {0} is not a multiple of 4")]
    Unaligned(u16),
}

/// The STUN magic cookie.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// The length of the frame at the start of `buf` once it is complete, or `None` while more bytes are needed.
/// ChannelData is padded to a multiple of four on streams, and the padding belongs to the frame.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    let Some(&[first, second, len_hi, len_lo]) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let _ = second;
    let len = u16::from_be_bytes([len_hi, len_lo]);
    match first >> 6 {
        0b00 => {
            if len % 4 != 0 {
                return Err(FramingError::Unaligned(len));
            }
            if let Some(cookie) = buf.get(4..8)
                && cookie != MAGIC_COOKIE
            {
                return Err(FramingError::NoMagicCookie);
            }
            Ok(Some(20 + usize::from(len)))
        }
        0b01 => Ok(Some(4 + usize::from(len).next_multiple_of(4))),
        _ => Err(FramingError::UnknownFrame(first)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_and_channel_data_frames_are_measured_and_garbage_refused() {
        assert_eq!(frame_len(&[0x00, 0x01]), Ok(None), "too short to tell");
        let binding = [0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        assert_eq!(frame_len(&binding), Ok(Some(28)));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x05]), Ok(Some(12)), "5 bytes of data padded to 8");
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x00]), Ok(Some(4)));
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Err(FramingError::UnknownFrame(0x80)));
        assert_eq!(frame_len(&[0x16, 0x03, 0x01, 0x02]), Err(FramingError::Unaligned(0x0102)), "a TLS hello");
        assert_eq!(frame_len(&[0x00, 0x01, 0x00, 0x08, 1, 2, 3, 4]), Err(FramingError::NoMagicCookie));
    }
}
