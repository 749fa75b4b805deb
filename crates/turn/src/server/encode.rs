//! What the server writes: replies' common attributes, refusal reasons, and the relay's hot-path messages (Data
//! indications written without a builder).

use std::net::{IpAddr, SocketAddr};

use stun_types::attribute::{AttributeType, ErrorCode, Software};
use stun_types::message::{
    Message, MessageClass, MessageType, MessageWrite, MessageWriteExt as _, MessageWriteVec, TransactionId,
};
use turn_types::attribute::{Icmp, XorPeerAddress};
use turn_types::message::DATA;

use crate::peer::Refusal;

/// Attributes below 0x8000 this server understands (RFC 8489 §14: others get 420 Unknown Attribute).
const UNDERSTOOD: [u16; 21] = [
    0x0001, 0x0006, 0x0008, 0x0009, 0x000a, 0x000c, 0x000d, 0x0012, 0x0013, 0x0014, 0x0015, 0x0016, 0x0017, 0x0018,
    0x0019, 0x001a, 0x001c, 0x001d, 0x001e, 0x0020, 0x0022,
];

pub(super) fn add_software<B: MessageWrite>(reply: &mut B) {
    if let Ok(software) = Software::new(concat!("peerbubble ", env!("CARGO_PKG_VERSION"))) {
        let _ = reply.add_attribute(&software);
    }
}

pub(super) fn add_error<B: MessageWrite>(
    reply: &mut B,
    code: u16,
    reason: &str,
) -> Result<(), stun_types::message::StunWriteError> {
    let error = ErrorCode::builder(code).reason(reason).build()?;
    reply.add_attribute(&error)
}

pub(super) fn refusal_reason(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Unspecified => "Forbidden: unspecified peer address",
        Refusal::Loopback => "Forbidden: loopback peer address",
        Refusal::LinkLocal => "Forbidden: link-local peer address",
        Refusal::Private => "Forbidden: private peer address",
        Refusal::SharedAddressSpace => "Forbidden: shared (CGNAT) peer address",
        Refusal::Multicast => "Forbidden: multicast peer address",
        Refusal::Broadcast => "Forbidden: broadcast peer address",
        Refusal::Documentation => "Forbidden: documentation peer address",
        Refusal::Reserved => "Forbidden: reserved peer address",
        Refusal::Cluster => "Forbidden: cluster peer address",
    }
}

pub(super) fn unknown_attributes(message: &Message<'_>) -> Option<Vec<AttributeType>> {
    let unknown: Vec<AttributeType> = message
        .iter_attributes()
        .map(|(_, raw)| raw.header.get_type())
        .filter(|t| t.comprehension_required() && !UNDERSTOOD.contains(&t.value()))
        .collect();
    (!unknown.is_empty()).then_some(unknown)
}

pub(super) fn xor_address(peer: SocketAddr, id: &[u8; 12], out: &mut Vec<u8>) {
    let cookie = crate::framing::MAGIC_COOKIE;
    let port = peer.port() ^ 0x2112;
    match peer.ip() {
        IpAddr::V4(v4) => {
            out.extend_from_slice(&[0x00, 0x12, 0x00, 0x08, 0x00, 0x01]);
            out.extend_from_slice(&port.to_be_bytes());
            let octets = v4.octets();
            out.extend(octets.iter().zip(cookie).map(|(a, b)| a ^ b));
        }
        IpAddr::V6(v6) => {
            out.extend_from_slice(&[0x00, 0x12, 0x00, 0x14, 0x00, 0x02]);
            out.extend_from_slice(&port.to_be_bytes());
            let key = cookie.iter().chain(id.iter());
            out.extend(v6.octets().iter().zip(key).map(|(a, b)| a ^ b));
        }
    }
}

/// A Data indication (RFC 8656 §11.4) carrying `payload` from `peer`, written without a builder: this is the
/// relay's hot path for clients without a channel. `tests::data_indications_parse` holds it to stun-types.
pub(super) fn data_indication(peer: SocketAddr, payload: &[u8], id: [u8; 12], out: &mut Vec<u8>) {
    let addr_len = if peer.is_ipv4() { 12 } else { 24 };
    let padded = payload.len().next_multiple_of(4);
    let body = addr_len + 4 + padded;
    let start = out.len();
    out.reserve(20 + body);
    out.extend_from_slice(&[0x00, 0x17]);
    out.extend_from_slice(&(body as u16).to_be_bytes());
    out.extend_from_slice(&crate::framing::MAGIC_COOKIE);
    out.extend_from_slice(&id);
    xor_address(peer, &id, out);
    out.extend_from_slice(&[0x00, 0x13]);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(start + 20 + body, 0);
}

/// Tells a client its Send went nowhere because the peer is forbidden: a Data indication with an ICMP
/// attribute, destination unreachable / administratively prohibited (RFC 8656 §11.5, §18.13).
pub(super) fn icmp_prohibited(peer: SocketAddr, id: [u8; 12], out: &mut Vec<u8>) {
    let mut message = Message::builder(
        MessageType::from_class_method(MessageClass::Indication, DATA),
        TransactionId::from(u128::from_be_bytes({
            let mut full = [0u8; 16];
            full[4..].copy_from_slice(&id);
            full
        })),
        MessageWriteVec::with_capacity(64),
    );
    let txid = message.transaction_id();
    let _ = message.add_attribute(&XorPeerAddress::new(peer, txid));
    let (icmp_type, code) = if peer.is_ipv4() { (3, 13) } else { (1, 1) };
    let _ = message.add_attribute(&Icmp::new(icmp_type, code, 0));
    *out = message.finish();
}
