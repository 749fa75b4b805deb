//! The relay-or-DataChannel choice, in the core and not in the edges: which contacts have an open DataChannel,
//! which signaling says are away (a closed tab's channel dies silently, so messages to an absent member take the
//! relay, where the bubble keeps them until it returns), and the chat messages sent on a channel and not yet
//! confirmed by a receipt, sent again through the relay if that channel closes or its contact goes away first
//! (a copy that arrives twice is refused as a replay and changes nothing).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use peerbubble_proto::MemberId;

use crate::client::MAX_RELAY_BODY;
use crate::message::MessageId;
use crate::wire::MAX_CHANNEL_MESSAGE;

/// Chat messages kept per contact until a receipt confirms them (oldest dropped first).
const MAX_UNCONFIRMED: usize = 256;

/// Where one envelope to one member goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// On the DataChannel with the member.
    Channel,
    /// Through the bubble's relay.
    Relay,
    /// Too large for the relay, and no channel takes it.
    TooLarge,
}

/// The paths to every contact.
#[derive(Debug, Default)]
pub(crate) struct Paths {
    channels: BTreeSet<MemberId>,
    away: BTreeSet<MemberId>,
    unconfirmed: BTreeMap<MemberId, VecDeque<(MessageId, Vec<u8>)>>,
}

impl Paths {
    /// Who is away, from a fresh directory.
    pub fn set_away(&mut self, away: impl IntoIterator<Item = MemberId>) {
        self.away = away.into_iter().collect();
    }

    /// A DataChannel with `member` opened.
    pub fn channel_opened(&mut self, member: MemberId) {
        self.channels.insert(member);
    }

    /// True while a DataChannel with `member` is open.
    pub fn has_channel(&self, member: MemberId) -> bool {
        self.channels.contains(&member)
    }

    /// The DataChannel with `member` closed: the messages it did not confirm, to send through the relay.
    pub fn channel_closed(&mut self, member: MemberId) -> Vec<Vec<u8>> {
        self.channels.remove(&member);
        self.take_unconfirmed(member)
    }

    /// The connection with `member` is gone (hung up, refused): no channel any more, nothing resent.
    pub fn drop_channel(&mut self, member: MemberId) {
        self.channels.remove(&member);
    }

    /// `member` went offline: its messages take the relay; those it did not confirm, to send again.
    pub fn offline(&mut self, member: MemberId) -> Vec<Vec<u8>> {
        self.away.insert(member);
        self.take_unconfirmed(member)
    }

    /// Whether signaling says `member` has no session.
    pub fn is_away(&self, member: MemberId) -> bool {
        self.away.contains(&member)
    }

    /// `member` came online.
    pub fn online(&mut self, member: MemberId) {
        self.away.remove(&member);
    }

    /// Our signaling session ended: who is online is not known any more, so open channels are trusted again.
    pub fn signaling_lost(&mut self) {
        self.away.clear();
    }

    /// Forgets everything about the paths to `member` (its conversation is gone).
    pub fn forget(&mut self, member: MemberId) {
        self.channels.remove(&member);
        self.unconfirmed.remove(&member);
    }

    /// `member` confirmed these messages.
    pub fn confirmed(&mut self, member: MemberId, ids: &[MessageId]) {
        if let Some(waiting) = self.unconfirmed.get_mut(&member) {
            waiting.retain(|(id, _)| !ids.contains(id));
        }
    }

    /// Where `body` to `member` goes; a chat message (`confirm`) sent on a channel is kept until its receipt.
    pub fn route(&mut self, member: MemberId, body: &[u8], confirm: Option<MessageId>) -> Route {
        if self.channels.contains(&member) && !self.away.contains(&member) && body.len() <= MAX_CHANNEL_MESSAGE {
            if let Some(id) = confirm {
                let waiting = self.unconfirmed.entry(member).or_default();
                if waiting.len() == MAX_UNCONFIRMED {
                    waiting.pop_front();
                }
                waiting.push_back((id, body.to_vec()));
            }
            Route::Channel
        } else if body.len() <= MAX_RELAY_BODY {
            Route::Relay
        } else {
            Route::TooLarge
        }
    }

    fn take_unconfirmed(&mut self, member: MemberId) -> Vec<Vec<u8>> {
        let waiting = self.unconfirmed.remove(&member).unwrap_or_default();
        waiting.into_iter().map(|(_, body)| body).filter(|body| body.len() <= MAX_RELAY_BODY).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_carries_messages_until_its_contact_is_away_and_what_it_did_not_confirm_is_sent_again() {
        let (bob, cat) = (MemberId::from_bytes([2; 16]), MemberId::from_bytes([3; 16]));
        let mut paths = Paths::default();
        assert_eq!(paths.route(bob, b"x", None), Route::Relay, "no channel yet");
        paths.channel_opened(bob);
        assert_eq!(paths.route(bob, b"one", Some(MessageId([1; 16]))), Route::Channel);
        assert_eq!(paths.route(bob, b"two", Some(MessageId([2; 16]))), Route::Channel);
        assert_eq!(paths.route(cat, b"x", None), Route::Relay);
        paths.confirmed(bob, &[MessageId([1; 16])]);
        // Bob's tab closed: signaling says so before the channel does.
        assert_eq!(paths.offline(bob), vec![b"two".to_vec()]);
        assert_eq!(paths.route(bob, b"three", None), Route::Relay, "an absent member's channel is not trusted");
        paths.online(bob);
        assert_eq!(paths.route(bob, b"four", Some(MessageId([4; 16]))), Route::Channel);
        assert_eq!(paths.channel_closed(bob), vec![b"four".to_vec()]);
        assert_eq!(paths.route(bob, &vec![0; MAX_RELAY_BODY + 1], None), Route::TooLarge);
    }
}
