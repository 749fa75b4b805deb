//! WebSocket (RFC 6455), the server's side, sans-IO.
//!
//! The bubble-server holds tens of thousands of signaling connections that are idle most of the time. A general
//! WebSocket library keeps a read buffer, a write buffer and a message buffer per connection for its whole life;
//! this crate keeps nothing for a connection between messages:
//!
//! - [`Decoder`] decodes frames straight out of the bytes the caller just read (a buffer the caller may share
//!   between connections), unmasking them in place. Only a frame cut by the end of a read is copied, and only
//!   until it is complete; a fragmented message is assembled, and freed once delivered. An idle decoder owns
//!   no heap memory ([`Decoder::is_idle`]).
//! - [`encode`] and [`encode_close`] append server frames to whatever buffer the caller writes from.
//! - [`accept`] checks an upgrade request's headers and computes `Sec-WebSocket-Accept`.
//!
//! Refusals are errors with the close code the connection ends with ([`Error::close_code`]): a client frame that
//! is not masked, reserved bits without an extension, an unknown opcode, a fragmented or oversized control frame,
//! a continuation without a message, a message over the limit (1009, detected from the frame header, before any
//! of it is buffered), text that is not UTF-8 (1007). No extension (permessage-deflate) and no subprotocol is
//! negotiated. No IO, no clock, no allocation on the path of a frame that arrives whole.

use std::ops::ControlFlow;

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// The GUID RFC 6455 appends to the client's key (§1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_HEADER: usize = 14;
/// Control frames carry at most this many bytes (§5.5).
pub const MAX_CONTROL: usize = 125;

/// A frame's opcode (§5.2); continuation frames are the decoder's business only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// A text message (UTF-8).
    Text = 1,
    /// A binary message.
    Binary = 2,
    /// The closing handshake.
    Close = 8,
    /// A ping, answered by a pong with the same payload.
    Ping = 9,
    /// A pong.
    Pong = 10,
}

const OP_CONTINUATION: u8 = 0;

/// A complete message or a control frame, borrowed from the bytes decoded (or the decoder's assembly buffer).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text message, valid UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping: answer with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer closes, with a status code and a reason if it gave them.
    Close(Option<(u16, &'a str)>),
}

/// Why the connection must end. Each names the close code to send ([`Error::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A text message, or a close frame's reason, is not valid UTF-8.
    #[error("a text message is not valid UTF-8")]
    InvalidUtf8,
    /// A message of at least this many bytes, over the decoder's limit.
    #[error("a message of {0} bytes is over the limit")]
    TooLong(u64),
    /// The peer broke the protocol.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
}

impl Error {
    /// The close code the connection ends with (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            Error::InvalidUtf8 => 1007,
            Error::TooLong(_) => 1009,
            Error::Protocol(_) => 1002,
        }
    }
}

/// A frame header, parsed.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
    payload: u64,
}

/// How many bytes the header starting `buf` takes, as far as `buf` tells (at least 2).
fn header_len(buf: &[u8]) -> usize {
    match buf.get(1).map(|b| b & 0x7F) {
        Some(126) => 4 + 4,
        Some(127) => 10 + 4,
        Some(_) => 2 + 4,
        None => 2,
    }
}

/// Parses the header at the start of `buf`: `None` if `buf` does not hold all of it yet. Checks what can be
/// checked from the header alone, as soon as the bytes that tell are there.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, Error> {
    let Some(&b0) = buf.first() else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(Error::Protocol("reserved bits set, and no extension was negotiated"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        0..=2 => {}
        8..=10 => {
            if !fin {
                return Err(Error::Protocol("a control frame must not be fragmented"));
            }
        }
        _ => return Err(Error::Protocol("unknown opcode")),
    }
    let Some(&b1) = buf.get(1) else { return Ok(None) };
    if b1 & 0x80 == 0 {
        return Err(Error::Protocol("a client's frame must be masked"));
    }
    let len = header_len(buf);
    if buf.len() < len {
        return Ok(None);
    }
    let payload = match b1 & 0x7F {
        126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(be);
            if n >> 63 != 0 {
                return Err(Error::Protocol("a frame length with its top bit set"));
            }
            n
        }
        n => u64::from(n),
    };
    if opcode >= 8 && payload > MAX_CONTROL as u64 {
        return Err(Error::Protocol("a control frame carries at most 125 bytes"));
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[len - 4..len]);
    Ok(Some(Header { fin, opcode, mask, len, payload }))
}

/// XORs `payload` with the masking key, in place (§5.3).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let key = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ key).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so its byte i takes the key's byte i % 4.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct Assembly {
    text: bool,
    payload: Vec<u8>,
}

/// Decodes a client's frames. Holds only what a read cut short, and a fragmented message until its last frame.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The start of a frame the last input ended in (header included, still masked).
    partial: Vec<u8>,
    assembly: Option<Assembly>,
    failed: bool,
}

impl Decoder {
    /// A decoder that refuses messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self { max_message, partial: Vec::new(), assembly: None, failed: false }
    }

    /// True if the decoder owns no heap memory: no frame cut short, no message being assembled.
    pub fn is_idle(&self) -> bool {
        self.partial.capacity() == 0 && self.assembly.is_none()
    }

    /// Decodes every frame in `input`, in order, unmasking it in place, and gives `each` every message and
    /// control frame, until `each` answers [`ControlFlow::Break`] (the rest of `input` is then ignored). An
    /// incomplete frame at the end is kept for the next call. After an error the decoder refuses everything.
    pub fn decode(
        &mut self,
        input: &mut [u8],
        mut each: impl FnMut(Frame<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        if self.failed {
            return Err(Error::Protocol("the connection already failed"));
        }
        let result = self.decode_inner(input, &mut each);
        if result.is_err() {
            self.failed = true;
            self.partial = Vec::new();
            self.assembly = None;
        }
        result
    }

    fn decode_inner(
        &mut self,
        mut input: &mut [u8],
        each: &mut impl FnMut(Frame<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        // First finish the frame the last input cut short.
        while !self.partial.is_empty() {
            let header = match parse_header(&self.partial)? {
                Some(header) => header,
                None => {
                    // Take only the header's bytes: the frame may be shorter than the longest header.
                    let take = (header_len(&self.partial) - self.partial.len()).min(input.len());
                    if take == 0 {
                        return Ok(ControlFlow::Continue(()));
                    }
                    let (head, rest) = std::mem::take(&mut input).split_at_mut(take);
                    self.partial.extend_from_slice(head);
                    input = rest;
                    continue;
                }
            };
            let total = self.frame_len(&header)?;
            let take = (total - self.partial.len()).min(input.len());
            let (head, rest) = std::mem::take(&mut input).split_at_mut(take);
            self.partial.reserve_exact(total - self.partial.len());
            self.partial.extend_from_slice(head);
            input = rest;
            if self.partial.len() < total {
                return Ok(ControlFlow::Continue(()));
            }
            // Freed once delivered: an idle connection keeps no buffer.
            let mut frame = std::mem::take(&mut self.partial);
            if self.frame(&header, &mut frame[header.len..], each)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        while !input.is_empty() {
            let Some(header) = parse_header(input)? else {
                self.partial.reserve_exact(MAX_HEADER);
                self.partial.extend_from_slice(input);
                return Ok(ControlFlow::Continue(()));
            };
            let total = self.frame_len(&header)?;
            if input.len() < total {
                self.partial.reserve_exact(total);
                self.partial.extend_from_slice(input);
                return Ok(ControlFlow::Continue(()));
            }
            let (frame, rest) = std::mem::take(&mut input).split_at_mut(total);
            input = rest;
            if self.frame(&header, &mut frame[header.len..], each)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The whole frame's length, header included, once the message it belongs to is known to fit the limit.
    fn frame_len(&self, header: &Header) -> Result<usize, Error> {
        if header.opcode < 8 {
            let before = self.assembly.as_ref().map_or(0, |a| a.payload.len()) as u64;
            let message = before.saturating_add(header.payload);
            if message > self.max_message as u64 {
                return Err(Error::TooLong(message));
            }
        }
        // Within the limit (a usize) or a control frame (at most 125 bytes).
        Ok(header.len + header.payload as usize)
    }

    fn frame(
        &mut self,
        header: &Header,
        payload: &mut [u8],
        each: &mut impl FnMut(Frame<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        unmask(payload, header.mask);
        match header.opcode {
            OP_CONTINUATION => {
                let Some(assembly) = self.assembly.as_mut() else {
                    return Err(Error::Protocol("a continuation frame with no message to continue"));
                };
                assembly.payload.extend_from_slice(payload);
                if !header.fin {
                    return Ok(ControlFlow::Continue(()));
                }
                let Some(Assembly { text, payload }) = self.assembly.take() else {
                    return Err(Error::Protocol("a continuation frame with no message to continue"));
                };
                message(text, &payload, each)
            }
            op @ (1 | 2) => {
                if self.assembly.is_some() {
                    return Err(Error::Protocol("a new message began before the last one ended"));
                }
                let text = op == Opcode::Text as u8;
                if header.fin {
                    return message(text, payload, each);
                }
                self.assembly = Some(Assembly { text, payload: payload.to_vec() });
                Ok(ControlFlow::Continue(()))
            }
            8 => match payload.len() {
                0 => Ok(each(Frame::Close(None))),
                1 => Err(Error::Protocol("a close frame's status code takes two bytes")),
                _ => {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    if !valid_close_code(code) {
                        return Err(Error::Protocol("a close frame with a status code that may not be sent"));
                    }
                    let reason = std::str::from_utf8(&payload[2..]).map_err(|_| Error::InvalidUtf8)?;
                    Ok(each(Frame::Close(Some((code, reason)))))
                }
            },
            9 => Ok(each(Frame::Ping(payload))),
            _ => Ok(each(Frame::Pong(payload))),
        }
    }
}

fn message(
    text: bool,
    payload: &[u8],
    each: &mut impl FnMut(Frame<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, Error> {
    if text {
        let text = std::str::from_utf8(payload).map_err(|_| Error::InvalidUtf8)?;
        Ok(each(Frame::Text(text)))
    } else {
        Ok(each(Frame::Binary(payload)))
    }
}

/// Status codes an endpoint may put in a close frame (§7.4: 1004-1006 and 1015 are reserved, 1016-2999 are
/// for future versions of the protocol, 3000-4999 for libraries and applications).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends one final, unmasked server frame.
pub fn encode(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    out.reserve(10 + payload.len());
    out.push(0x80 | opcode as u8);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if let Ok(short) = u16::try_from(n) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame; a reason longer than a control frame allows is cut at a character boundary.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode(out, Opcode::Close, &payload[..2 + end]);
}

/// Why a request is not a WebSocket upgrade this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No `Connection: upgrade`, or no `Upgrade: websocket`.
    #[error("this address takes a WebSocket (Connection: upgrade, Upgrade: websocket)")]
    NotUpgrade,
    /// A WebSocket version other than 13.
    #[error("WebSocket version 13 only (Sec-WebSocket-Version: 13)")]
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 bytes in base64.
    #[error("Sec-WebSocket-Key must be 16 bytes in base64")]
    Key,
}

/// Checks an upgrade request's header values (`Connection`, `Upgrade`, `Sec-WebSocket-Version`,
/// `Sec-WebSocket-Key`; each as received, `None` if absent) and answers the `Sec-WebSocket-Accept` value.
pub fn accept(
    connection: Option<&[u8]>,
    upgrade: Option<&[u8]>,
    version: Option<&[u8]>,
    key: Option<&[u8]>,
) -> Result<String, HandshakeError> {
    let has_token = |value: Option<&[u8]>, token: &[u8]| {
        value.is_some_and(|v| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token)))
    };
    if !has_token(connection, b"upgrade") || !has_token(upgrade, b"websocket") {
        return Err(HandshakeError::NotUpgrade);
    }
    if version.map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError::Version);
    }
    let key = key.map(<[u8]>::trim_ascii).ok_or(HandshakeError::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => Ok(accept_key(key)),
        _ => Err(HandshakeError::Key),
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use proptest::prelude::*;

    use super::*;

    /// A client frame: masked with `mask`.
    fn client_frame(fin: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(if fin { 0x80 } else { 0 } | opcode);
        let n = payload.len();
        if n < 126 {
            out.push(0x80 | n as u8);
        } else if n <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        unmask(&mut out[start..], mask);
        out
    }

    /// What a frame was, owned, to compare.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    fn own(frame: Frame<'_>) -> Got {
        match frame {
            Frame::Text(t) => Got::Text(t.to_owned()),
            Frame::Binary(b) => Got::Binary(b.to_vec()),
            Frame::Ping(b) => Got::Ping(b.to_vec()),
            Frame::Pong(b) => Got::Pong(b.to_vec()),
            Frame::Close(c) => Got::Close(c.map(|(code, r)| (code, r.to_owned()))),
        }
    }

    /// Decodes `bytes` cut into the given pieces.
    fn decode_in(max: usize, bytes: &[u8], cuts: &[usize]) -> (Vec<Got>, Result<(), Error>, Decoder) {
        let mut decoder = Decoder::new(max);
        let mut got = Vec::new();
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.push(bytes.len());
        for end in bounds {
            let mut piece = bytes[at..end].to_vec();
            at = end;
            if let Err(e) = decoder.decode(&mut piece, |f| {
                got.push(own(f));
                ControlFlow::Continue(())
            }) {
                return (got, Err(e), decoder);
            }
        }
        (got, Ok(()), decoder)
    }

    #[test]
    fn the_rfc_example_key_is_accepted() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let ok =
            accept(Some(b"keep-alive, Upgrade"), Some(b"WebSocket"), Some(b"13"), Some(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(ok.as_deref(), Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn requests_that_are_not_an_upgrade_are_refused_with_the_reason() {
        let key = Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..]);
        assert_eq!(accept(None, Some(b"websocket"), Some(b"13"), key), Err(HandshakeError::NotUpgrade));
        assert_eq!(accept(Some(b"upgrade"), Some(b"h2c"), Some(b"13"), key), Err(HandshakeError::NotUpgrade));
        assert_eq!(accept(Some(b"upgrade"), Some(b"websocket"), Some(b"8"), key), Err(HandshakeError::Version));
        assert_eq!(accept(Some(b"upgrade"), Some(b"websocket"), Some(b"13"), None), Err(HandshakeError::Key));
        let short = Some(&b"c2hvcnQ="[..]);
        assert_eq!(accept(Some(b"upgrade"), Some(b"websocket"), Some(b"13"), short), Err(HandshakeError::Key));
    }

    #[test]
    fn frames_cut_anywhere_decode_the_same_and_leave_nothing_held() {
        let mut bytes = client_frame(true, 1, [1, 2, 3, 4], "héllo".as_bytes());
        bytes.extend(client_frame(true, 9, [9, 9, 9, 9], b"ping"));
        bytes.extend(client_frame(false, 2, [0xff, 0, 0xff, 0], &[7; 300]));
        bytes.extend(client_frame(true, 10, [5, 6, 7, 8], b""));
        bytes.extend(client_frame(true, 0, [3, 1, 4, 1], &[8; 70_000]));
        bytes.extend(client_frame(true, 8, [1, 1, 1, 1], &[0x03, 0xe8, b'b', b'y', b'e']));
        let mut binary = vec![7; 300];
        binary.extend([8; 70_000]);
        let want = vec![
            Got::Text("héllo".into()),
            Got::Ping(b"ping".to_vec()),
            Got::Pong(Vec::new()),
            Got::Binary(binary),
            Got::Close(Some((1000, "bye".into()))),
        ];
        for cut in (0..bytes.len()).step_by(97).chain([1, 2, 3, 5, 7, 8, 13, 14, 15]) {
            let (got, result, decoder) = decode_in(1 << 20, &bytes, &[cut]);
            assert_eq!(result, Ok(()), "cut at {cut}");
            assert_eq!(got, want, "cut at {cut}");
            assert!(decoder.is_idle(), "cut at {cut}: the decoder still holds memory");
        }
        // Byte by byte.
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        let (got, result, decoder) = decode_in(1 << 20, &bytes, &cuts);
        assert_eq!((got, result), (want, Ok(())));
        assert!(decoder.is_idle());
    }

    #[test]
    fn a_message_over_the_limit_is_refused_from_its_header() {
        // Only the header arrives: the size is known, nothing is buffered for it.
        let frame = client_frame(true, 1, [1, 2, 3, 4], &[b'a'; 5000]);
        let (got, result, decoder) = decode_in(4096, &frame[..8], &[]);
        assert_eq!((got, result), (vec![], Err(Error::TooLong(5000))));
        assert!(decoder.is_idle());
        assert_eq!(Error::TooLong(5000).close_code(), 1009);
        // A fragmented message is counted across its frames.
        let mut bytes = client_frame(false, 1, [1, 2, 3, 4], &[b'a'; 3000]);
        bytes.extend(client_frame(true, 0, [1, 2, 3, 4], &[b'a'; 3000]));
        assert_eq!(decode_in(4096, &bytes, &[]).1, Err(Error::TooLong(6000)));
        // At the limit it passes.
        let frame = client_frame(true, 1, [1, 2, 3, 4], &[b'a'; 4096]);
        assert_eq!(decode_in(4096, &frame, &[]).0, vec![Got::Text("a".repeat(4096))]);
    }

    #[test]
    fn protocol_violations_are_refused_with_1002_and_the_decoder_stays_failed() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], "a client's frame must be masked"),
            (vec![0xC1, 0x80, 0, 0, 0, 0], "reserved bits set, and no extension was negotiated"),
            (vec![0x83, 0x80, 0, 0, 0, 0], "unknown opcode"),
            (vec![0x09, 0x80, 0, 0, 0, 0], "a control frame must not be fragmented"),
            (client_frame(true, 9, [0; 4], &[0; 126]), "a control frame carries at most 125 bytes"),
            (client_frame(true, 0, [0; 4], b"x"), "a continuation frame with no message to continue"),
            (client_frame(true, 8, [0; 4], &[3]), "a close frame's status code takes two bytes"),
            (client_frame(true, 8, [0; 4], &[0x03, 0xed]), "a close frame with a status code that may not be sent"),
            (
                [client_frame(false, 1, [0; 4], b"a"), client_frame(true, 1, [0; 4], b"b")].concat(),
                "a new message began before the last one ended",
            ),
            (vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "a frame length with its top bit set"),
        ];
        for (bytes, why) in cases {
            let (_, result, mut decoder) = decode_in(1 << 20, &bytes, &[]);
            assert_eq!(result, Err(Error::Protocol(why)));
            assert_eq!(Error::Protocol(why).close_code(), 1002);
            let mut good = client_frame(true, 1, [0; 4], b"ok");
            assert!(decoder.decode(&mut good, |_| panic!("decoded after a failure")).is_err());
            assert!(decoder.is_idle());
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_refused_with_1007_even_across_fragments() {
        let frame = client_frame(true, 1, [1, 2, 3, 4], &[0xff, 0xfe]);
        assert_eq!(decode_in(1024, &frame, &[]).1, Err(Error::InvalidUtf8));
        assert_eq!(Error::InvalidUtf8.close_code(), 1007);
        // "é" cut between two fragments is fine; a close reason that is not UTF-8 is not.
        let mut bytes = client_frame(false, 1, [1, 2, 3, 4], &[0xc3]);
        bytes.extend(client_frame(true, 0, [1, 2, 3, 4], &[0xa9]));
        assert_eq!(decode_in(1024, &bytes, &[]).0, vec![Got::Text("é".into())]);
        let close = client_frame(true, 8, [1, 2, 3, 4], &[0x03, 0xe8, 0xff]);
        assert_eq!(decode_in(1024, &close, &[]).1, Err(Error::InvalidUtf8));
    }

    #[test]
    fn break_stops_at_that_frame() {
        let mut bytes = client_frame(true, 1, [1, 2, 3, 4], b"one");
        bytes.extend(client_frame(true, 1, [1, 2, 3, 4], b"two"));
        let mut decoder = Decoder::new(1024);
        let mut got = Vec::new();
        let flow = decoder.decode(&mut bytes, |f| {
            got.push(own(f));
            ControlFlow::Break(())
        });
        assert_eq!(flow, Ok(ControlFlow::Break(())));
        assert_eq!(got, vec![Got::Text("one".into())]);
    }

    #[test]
    fn server_frames_are_unmasked_with_the_shortest_length() {
        for (n, head) in [(0usize, 2usize), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            encode(&mut out, Opcode::Text, &vec![b'x'; n]);
            assert_eq!(out.len(), head + n, "{n}");
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0, "a server frame is not masked");
        }
        let mut out = Vec::new();
        encode_close(&mut out, 4001, &"é".repeat(100));
        assert_eq!(out[0], 0x88);
        assert_eq!(usize::from(out[1]), out.len() - 2);
        assert!(out.len() - 2 <= MAX_CONTROL);
        assert_eq!(&out[2..4], &4001u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok(), "cut at a character boundary");
    }

    proptest! {
        #[test]
        fn any_messages_cut_anywhere_decode_to_themselves(
            messages in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..600), 1usize..4, any::<[u8; 4]>()),
                1..8,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut bytes = Vec::new();
            let mut want = Vec::new();
            for (text, payload, fragments, mask) in messages {
                let payload = if text { String::from_utf8_lossy(&payload).into_owned().into_bytes() } else { payload };
                let step = payload.len().div_ceil(fragments).max(1);
                let pieces: Vec<&[u8]> = if payload.is_empty() { vec![&[][..]] } else { payload.chunks(step).collect() };
                for (i, piece) in pieces.iter().enumerate() {
                    let opcode = if i == 0 { if text { 1 } else { 2 } } else { 0 };
                    bytes.extend(client_frame(i + 1 == pieces.len(), opcode, mask, piece));
                    if i == 0 {
                        // A control frame between fragments (or after a whole message).
                        bytes.extend(client_frame(true, 9, mask, b"p"));
                    }
                }
                let whole = pieces.len() == 1;
                let message = if text { Got::Text(String::from_utf8(payload).unwrap()) } else { Got::Binary(payload) };
                if whole {
                    want.extend([message, Got::Ping(b"p".to_vec())]);
                } else {
                    want.extend([Got::Ping(b"p".to_vec()), message]);
                }
            }
            let (got, result, decoder) = decode_in(1 << 16, &bytes, &cuts);
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(got, want);
            prop_assert!(decoder.is_idle());
        }
    }
}
