//! The set-up of the connection (RTCPeerConnection) with each contact: offer and answer travel inside the pair's
//! 1:1 MLS conversation, each with the DTLS fingerprint of its sender's certificate, and the fingerprint the
//! contact announced is the only certificate the edge may accept from it (DESIGN.md: DTLS fingerprints bound to
//! identities). This sub-machine keeps, per contact, where the set-up is and which fingerprint to expect; the
//! [`crate::Client`] routes the signals to it and sends what it decides.

use std::collections::HashMap;

use peerbubble_proto::MemberId;

use crate::fingerprint::{Fingerprint, sdp_has_only_fingerprint};
use crate::message::{CallSignal, MessageId};

/// The set-up of the connection with one contact.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// We sent an offer and wait for the answer.
    Offering { call: MessageId },
    /// We received an offer (its fingerprint is the one to accept) and owe an answer.
    Answering { call: MessageId, remote: Fingerprint },
    /// Offer and answer exchanged; `remote` is the only DTLS certificate to accept.
    Agreed { call: MessageId, remote: Fingerprint },
}

impl State {
    fn call(&self) -> MessageId {
        match self {
            State::Offering { call } | State::Answering { call, .. } | State::Agreed { call, .. } => *call,
        }
    }
}

/// What to do with a contact's set-up signal that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to the edge.
    Pass,
    /// Drop it quietly: both offered at once, and ours wins (the lower member id).
    Ignore,
    /// The contact hung up: hand it to the edge; the connection is gone.
    HungUp,
}

/// The connection set-up with every contact.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    calls: HashMap<MemberId, State>,
}

impl Calls {
    /// We offered `call` to `peer`.
    pub fn offered(&mut self, peer: MemberId, call: MessageId) {
        self.calls.insert(peer, State::Offering { call });
    }

    /// The offer from `peer` we owe an answer to.
    pub fn to_answer(&self, peer: MemberId) -> Option<MessageId> {
        match self.calls.get(&peer)? {
            State::Answering { call, .. } => Some(*call),
            _ => None,
        }
    }

    /// We answered `peer`'s offer: the set-up is agreed.
    pub fn answered(&mut self, peer: MemberId) {
        if let Some(State::Answering { call, remote }) = self.calls.get(&peer).cloned() {
            self.calls.insert(peer, State::Agreed { call, remote });
        }
    }

    /// The call under way with `peer`, at whatever stage.
    pub fn current(&self, peer: MemberId) -> Option<MessageId> {
        self.calls.get(&peer).map(State::call)
    }

    /// Forgets the set-up with `peer`; the call it was, if any.
    pub fn end(&mut self, peer: MemberId) -> Option<MessageId> {
        self.calls.remove(&peer).map(|state| state.call())
    }

    /// The DTLS fingerprint `peer` announced in its MLS-authenticated offer or answer.
    pub fn expected(&self, peer: MemberId) -> Option<&Fingerprint> {
        match self.calls.get(&peer)? {
            State::Answering { remote, .. } | State::Agreed { remote, .. } => Some(remote),
            State::Offering { .. } => None,
        }
    }

    /// True only if `actual` is the certificate `peer` announced; otherwise the set-up is forgotten.
    pub fn verify(&mut self, peer: MemberId, actual: &Fingerprint) -> bool {
        let ok = self.expected(peer) == Some(actual);
        if !ok {
            self.calls.remove(&peer);
        }
        ok
    }

    /// A set-up signal (`Offer`, `Answer`, `Candidate`, `Hangup`) from `from`, already known to come from its
    /// 1:1 conversation: checked against where the set-up is, which it moves on. `Err` names why it is refused.
    pub fn on_signal(&mut self, me: MemberId, from: MemberId, signal: &CallSignal) -> Result<Verdict, &'static str> {
        match signal {
            CallSignal::Offer { call, sdp, fingerprint } => {
                if !sdp_has_only_fingerprint(sdp, fingerprint) {
                    return Err("SDP fingerprint differs from the signed one");
                }
                // Both offered at once: the offer of the lower member id wins.
                if matches!(self.calls.get(&from), Some(State::Offering { .. })) && me < from {
                    return Ok(Verdict::Ignore);
                }
                self.calls.insert(from, State::Answering { call: *call, remote: *fingerprint });
                Ok(Verdict::Pass)
            }
            CallSignal::Answer { call, sdp, fingerprint } => {
                if self.calls.get(&from) != Some(&State::Offering { call: *call }) {
                    return Err("answer to no offer of ours");
                }
                if !sdp_has_only_fingerprint(sdp, fingerprint) {
                    return Err("SDP fingerprint differs from the signed one");
                }
                self.calls.insert(from, State::Agreed { call: *call, remote: *fingerprint });
                Ok(Verdict::Pass)
            }
            CallSignal::Candidate { call, .. } | CallSignal::Hangup { call } => {
                if self.current(from) != Some(*call) {
                    return Err("signal for another call");
                }
                if let CallSignal::Candidate { candidate, .. } = signal
                    && !is_candidate_line(candidate)
                {
                    return Err("not one ICE candidate line");
                }
                if matches!(signal, CallSignal::Hangup { .. }) {
                    self.calls.remove(&from);
                    return Ok(Verdict::HungUp);
                }
                Ok(Verdict::Pass)
            }
            // Media calls ring on an agreed connection; they are the client's and the group calls' business.
            CallSignal::Ring { .. } | CallSignal::Accept { .. } | CallSignal::End { .. } | CallSignal::Full { .. } => {
                Ok(Verdict::Pass)
            }
        }
    }
}

/// One `candidate:` attribute value (RFC 8839), as `RTCIceCandidate.candidate` gives it: nothing an edge could
/// read as another SDP line. An empty value (end of candidates) is not sent.
pub(crate) fn is_candidate_line(candidate: &str) -> bool {
    candidate.starts_with("candidate:") && candidate.chars().all(|c| c.is_ascii_graphic() || c == ' ')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fingerprint(byte: u8) -> Fingerprint {
        Fingerprint::of_certificate(&[byte; 64])
    }

    fn sdp(f: &Fingerprint) -> String {
        format!("v=0\r\na=fingerprint:{f}\r\n")
    }

    #[test]
    fn the_fingerprint_to_accept_is_the_one_the_contact_signed() {
        let (me, peer) = (MemberId::from_bytes([1; 16]), MemberId::from_bytes([2; 16]));
        let mut calls = Calls::default();
        let call = MessageId([7; 16]);
        calls.offered(peer, call);
        assert_eq!(calls.expected(peer), None, "nothing to accept before the answer");
        let theirs = fingerprint(9);
        let answer = CallSignal::Answer { call, sdp: sdp(&theirs), fingerprint: theirs };
        assert_eq!(calls.on_signal(me, peer, &answer), Ok(Verdict::Pass));
        assert_eq!(calls.expected(peer), Some(&theirs));
        assert!(!calls.verify(peer, &fingerprint(8)), "another certificate");
        assert_eq!(calls.current(peer), None, "a wrong certificate ends the set-up");
    }

    #[test]
    fn an_sdp_that_names_another_certificate_is_refused() {
        let (me, peer) = (MemberId::from_bytes([1; 16]), MemberId::from_bytes([2; 16]));
        let mut calls = Calls::default();
        let offer =
            CallSignal::Offer { call: MessageId([1; 16]), sdp: sdp(&fingerprint(3)), fingerprint: fingerprint(4) };
        assert_eq!(calls.on_signal(me, peer, &offer), Err("SDP fingerprint differs from the signed one"));
        assert_eq!(calls.current(peer), None);
    }

    #[test]
    fn offers_crossing_keep_the_lower_members_and_stray_signals_are_refused() {
        let (low, high) = (MemberId::from_bytes([1; 16]), MemberId::from_bytes([2; 16]));
        let (ours, theirs) = (MessageId([1; 16]), MessageId([2; 16]));
        let f = fingerprint(5);
        let offer = |call| CallSignal::Offer { call, sdp: sdp(&f), fingerprint: f };
        // The lower member keeps its own offer.
        let mut calls = Calls::default();
        calls.offered(high, ours);
        assert_eq!(calls.on_signal(low, high, &offer(theirs)), Ok(Verdict::Ignore));
        assert_eq!(calls.current(high), Some(ours));
        // The higher member answers the lower's.
        let mut calls = Calls::default();
        calls.offered(low, ours);
        assert_eq!(calls.on_signal(high, low, &offer(theirs)), Ok(Verdict::Pass));
        assert_eq!(calls.to_answer(low), Some(theirs));
        let stray = CallSignal::Candidate { call: ours, candidate: "candidate:1".into() };
        assert_eq!(calls.on_signal(high, low, &stray), Err("signal for another call"));
        let trickled = |candidate: &str| CallSignal::Candidate { call: theirs, candidate: candidate.into() };
        let host = "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0";
        assert_eq!(calls.on_signal(high, low, &trickled(host)), Ok(Verdict::Pass));
        for bad in ["", "a=fingerprint:sha-256 00", "candidate:1 1 udp 1 127.0.0.1 1 typ host\r\na=fingerprint:x"] {
            assert_eq!(calls.on_signal(high, low, &trickled(bad)), Err("not one ICE candidate line"), "{bad:?}");
        }
        assert_eq!(calls.to_answer(low), Some(theirs), "a refused candidate leaves the set-up as it was");
        assert_eq!(calls.on_signal(high, low, &CallSignal::Hangup { call: theirs }), Ok(Verdict::HungUp));
        assert_eq!(calls.current(low), None);
    }
}
