//! Group calls: who is in the call that rings in a group conversation. The media is a mesh over each pair's
//! own connection (set up inside that pair's 1:1 conversation); this sub-machine only keeps, per group, the
//! call's id, whether it has video, and who joined, from the `Ring`, `Accept` and `End` every member of the group
//! receives. Each member therefore knows who is in the call before joining it, and both sides of a pair agree on
//! which of them sets the pair's media up (the lower member id, as for connections).
//!
//! A mesh sends every stream to every other participant: a call takes at most [`MAX_VIDEO_PARTICIPANTS`] with
//! video and [`MAX_AUDIO_PARTICIPANTS`] audio-only. A join beyond that is refused where it is made, and ignored
//! by the others if it arrives anyway (a modified client), so nobody's uplink is silently overrun.

use std::collections::{BTreeSet, HashMap};

use peerbubble_proto::MemberId;

use crate::client::ConversationId;
use crate::message::MessageId;

/// Participants of a group call with video (each sends its camera to each other: uplink grows with the count).
pub const MAX_VIDEO_PARTICIPANTS: usize = 4;
/// Participants of an audio-only group call.
pub const MAX_AUDIO_PARTICIPANTS: usize = 8;

/// The call under way in one group conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCall {
    /// The call's id (the `Ring`'s).
    pub ring: MessageId,
    /// Who rang.
    pub caller: MemberId,
    /// With video (and so the smaller limit).
    pub video: bool,
    /// Who is in the call now, the caller and this member included once they are in.
    pub participants: BTreeSet<MemberId>,
    /// Joins refused because the call was full, in the order they came (at most a call's worth): if this
    /// member's own join turns out to be the one the caller did not count, these are what the others counted.
    pub turned_away: Vec<MemberId>,
}

impl GroupCall {
    /// How many may be in this call.
    pub fn limit(&self) -> usize {
        if self.video { MAX_VIDEO_PARTICIPANTS } else { MAX_AUDIO_PARTICIPANTS }
    }

    /// Whether one more participant would go over the limit.
    pub fn full(&self) -> bool {
        self.participants.len() >= self.limit()
    }
}

/// Why a group-call signal changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupCallError {
    /// No call rings in this group (or it is another call).
    #[error("no such call in this group")]
    NoCall,
    /// The call has as many participants as a mesh carries.
    #[error("this call is full: at most {0} people (4 with video, 8 audio-only)")]
    Full(usize),
}

/// The group calls this member knows of, one per group conversation.
#[derive(Debug, Default)]
pub struct GroupCalls {
    calls: HashMap<ConversationId, GroupCall>,
}

impl GroupCalls {
    /// The call in `conversation`, if one is under way.
    pub fn get(&self, conversation: ConversationId) -> Option<&GroupCall> {
        self.calls.get(&conversation)
    }

    /// `caller` rang in `conversation` (us included). Two rings at once in one group: both sides keep the one
    /// with the lower id, so the group ends up in one call. A ring while a call is under way joins that call
    /// instead (the caller is told its id by the `Accept` it then sends).
    pub fn rang(&mut self, conversation: ConversationId, caller: MemberId, ring: MessageId, video: bool) -> &GroupCall {
        let keep = matches!(
            self.calls.get(&conversation),
            Some(current) if current.participants.len() > 1 || current.ring < ring
        );
        if !keep {
            let participants = BTreeSet::from([caller]);
            self.calls.insert(conversation, GroupCall { ring, caller, video, participants, turned_away: Vec::new() });
        }
        &self.calls[&conversation]
    }

    /// `member` joined call `ring` in `conversation`.
    pub fn joined(
        &mut self,
        conversation: ConversationId,
        member: MemberId,
        ring: MessageId,
    ) -> Result<&GroupCall, GroupCallError> {
        let call = self.calls.get_mut(&conversation).filter(|c| c.ring == ring).ok_or(GroupCallError::NoCall)?;
        if !call.participants.contains(&member) {
            if call.full() {
                if !call.turned_away.contains(&member) && call.turned_away.len() < MAX_AUDIO_PARTICIPANTS {
                    call.turned_away.push(member);
                }
                return Err(GroupCallError::Full(call.limit()));
            }
            call.participants.insert(member);
        }
        Ok(call)
    }

    /// The caller did not count our join (`me`): someone took the last seat at the same moment. We leave the
    /// call, and count, as everyone else did, the joins we turned away while we thought we were in.
    pub fn turned_out(&mut self, conversation: ConversationId, me: MemberId, ring: MessageId) -> Option<&GroupCall> {
        let call = self.calls.get_mut(&conversation).filter(|c| c.ring == ring)?;
        if !call.participants.remove(&me) {
            return Some(call);
        }
        for member in std::mem::take(&mut call.turned_away) {
            if call.full() {
                break;
            }
            call.participants.insert(member);
        }
        Some(call)
    }

    /// Whether `member` could join call `ring` now (checked before saying so to the group).
    pub fn can_join(
        &self,
        conversation: ConversationId,
        member: MemberId,
        ring: MessageId,
    ) -> Result<(), GroupCallError> {
        let call = self.calls.get(&conversation).filter(|c| c.ring == ring).ok_or(GroupCallError::NoCall)?;
        if !call.participants.contains(&member) && call.full() {
            return Err(GroupCallError::Full(call.limit()));
        }
        Ok(())
    }

    /// `member` left call `ring` (hung up or declined); the call is over once nobody is in it.
    pub fn left(&mut self, conversation: ConversationId, member: MemberId, ring: MessageId) -> Option<&GroupCall> {
        let call = self.calls.get_mut(&conversation).filter(|c| c.ring == ring)?;
        call.participants.remove(&member);
        if call.participants.is_empty() {
            self.calls.remove(&conversation);
            return None;
        }
        self.calls.get(&conversation)
    }

    /// `member` left the group: it is in none of its calls any more.
    pub fn left_group(&mut self, conversation: ConversationId, member: MemberId) {
        if let Some(call) = self.calls.get_mut(&conversation) {
            call.participants.remove(&member);
            if call.participants.is_empty() {
                self.calls.remove(&conversation);
            }
        }
    }

    /// The group is gone (closed, or we left it): so is its call.
    pub fn forget(&mut self, conversation: ConversationId) {
        self.calls.remove(&conversation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8) -> MemberId {
        MemberId::from_bytes([n; 16])
    }

    #[test]
    fn joins_up_to_the_limit_then_refuses_and_a_leaver_makes_room() {
        let mut calls = GroupCalls::default();
        let group = ConversationId([1; 16]);
        let ring = MessageId([9; 16]);
        calls.rang(group, member(1), ring, true);
        for n in 2..=4 {
            calls.joined(group, member(n), ring).unwrap();
        }
        assert_eq!(calls.can_join(group, member(5), ring), Err(GroupCallError::Full(MAX_VIDEO_PARTICIPANTS)));
        assert_eq!(calls.joined(group, member(5), ring).unwrap_err(), GroupCallError::Full(4));
        // Someone already in may say so again.
        assert!(calls.joined(group, member(4), ring).is_ok());
        calls.left(group, member(2), ring);
        assert!(calls.joined(group, member(5), ring).is_ok());
        assert_eq!(calls.get(group).unwrap().participants.len(), 4);
    }

    #[test]
    fn turned_out_of_the_last_seat_we_count_what_the_others_counted() {
        let mut calls = GroupCalls::default();
        let group = ConversationId([1; 16]);
        let ring = MessageId([9; 16]);
        let me = member(5);
        calls.rang(group, member(1), ring, true);
        for n in [2, 3] {
            calls.joined(group, member(n), ring).unwrap();
        }
        // We take the last seat; member 4 took it at the same moment, and member 6 comes later still.
        calls.joined(group, me, ring).unwrap();
        assert!(calls.joined(group, member(4), ring).is_err());
        assert!(calls.joined(group, member(6), ring).is_err());
        let after = calls.turned_out(group, me, ring).unwrap();
        assert_eq!(after.participants, BTreeSet::from([member(1), member(2), member(3), member(4)]));
        assert!(after.turned_away.is_empty());
        // Told twice, or for another call: nothing more changes.
        let again = calls.turned_out(group, me, ring).unwrap().participants.clone();
        assert_eq!(again.len(), 4);
        assert!(calls.turned_out(group, me, MessageId([8; 16])).is_none());
    }

    #[test]
    fn audio_only_takes_eight() {
        let mut calls = GroupCalls::default();
        let group = ConversationId([1; 16]);
        let ring = MessageId([9; 16]);
        calls.rang(group, member(1), ring, false);
        for n in 2..=8 {
            calls.joined(group, member(n), ring).unwrap();
        }
        assert_eq!(calls.joined(group, member(9), ring).unwrap_err(), GroupCallError::Full(8));
    }

    #[test]
    fn two_rings_at_once_settle_on_the_lower_id_and_a_ring_during_a_call_does_not_replace_it() {
        let (group, low, high) = (ConversationId([1; 16]), MessageId([1; 16]), MessageId([2; 16]));
        let mut a = GroupCalls::default();
        let mut b = GroupCalls::default();
        a.rang(group, member(1), low, false);
        a.rang(group, member(2), high, false);
        b.rang(group, member(2), high, false);
        b.rang(group, member(1), low, false);
        assert_eq!(a.get(group).unwrap().ring, low);
        assert_eq!(b.get(group).unwrap().ring, low);
        // A call with people in it is not replaced by a later ring, even with a lower id.
        a.joined(group, member(3), low).unwrap();
        a.rang(group, member(4), MessageId([0; 16]), true);
        assert_eq!(a.get(group).unwrap().ring, low);
    }

    #[test]
    fn the_call_ends_when_the_last_one_leaves_and_signals_for_another_call_change_nothing() {
        let mut calls = GroupCalls::default();
        let group = ConversationId([1; 16]);
        let ring = MessageId([9; 16]);
        calls.rang(group, member(1), ring, false);
        calls.joined(group, member(2), ring).unwrap();
        assert_eq!(calls.joined(group, member(3), MessageId([8; 16])).unwrap_err(), GroupCallError::NoCall);
        assert!(calls.left(group, member(1), MessageId([8; 16])).is_none());
        assert_eq!(calls.get(group).unwrap().participants.len(), 2);
        assert!(calls.left(group, member(1), ring).is_some());
        assert!(calls.left(group, member(2), ring).is_none());
        assert!(calls.get(group).is_none());
    }
}
