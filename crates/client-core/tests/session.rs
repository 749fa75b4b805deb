//! `Session` (signaling and the client wired together) against a small bubble written here from the protocol's
//! own frames: it authenticates each session, sends each its directory slice, relays `send` as `deliver`,
//! orders commits (the first per group and epoch wins, later ones get `commit_conflict`) and can cut
//! connections, and keeps what is sent to a member with no session in a mailbox (delivered with `seq` when it
//! comes back, deleted on `received`). Two and three members set up conversations and talk through it with
//! nothing but the sessions' own routing; envelopes wait while signaling is down; a refused member's session
//! stops; an absent member reads what waited, acknowledged only once saved.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};

use peerbubble_client_core::client::{Client, Event};
use peerbubble_client_core::session::{Session, SessionEvent};
use peerbubble_client_core::{ConversationId, SignalEvent};
use peerbubble_proto::{
    ClientFrame, DirectoryEntry, ErrorCode, IdentityKey, Limits, MemberId, Nonce, ServerFrame, SessionId,
    decode_client_frame, encode_frame,
};

const BUBBLE: &str = "cell";

fn key(n: u8) -> IdentityKey {
    IdentityKey::from_seed(&[n; 32])
}

fn limits() -> Limits {
    Limits {
        max_frame_bytes: 256 * 1024,
        max_body_bytes: 192 * 1024,
        frames_per_second: 500,
        frame_burst: 1000,
        member_frames_per_second: 1000,
        max_sessions_per_member: 4,
        idle_timeout_ms: 60_000,
    }
}

/// One member: its session, whether its socket is open, and what it reported.
struct Peer {
    session: Session,
    id: MemberId,
    open: bool,
    /// Its network is down: connection attempts fail.
    offline: bool,
    /// Which visible members (by index).
    sees: Vec<usize>,
    events: Vec<SessionEvent>,
    /// Its edge saves what changed (and then says so with `Session::saved`).
    saves: bool,
    /// Steps after which the session asked to be saved.
    saved_steps: u32,
}

struct Bubble {
    peers: Vec<Peer>,
    /// (group, epoch) of commits already accepted.
    ordered: BTreeSet<(Vec<u8>, u64)>,
    now: u64,
    /// What waits for members with no session: (seq, frame) per member index.
    mailbox: HashMap<usize, Vec<(u64, ServerFrame)>>,
    next_seq: u64,
    /// The bubble keeps KeyPackages (tells each session its stock, keeps what it publishes, hands them out).
    keeps_key_packages: bool,
    /// Per member index: one-time KeyPackages (oldest first) and the last-resort one.
    key_packages: HashMap<usize, (Vec<peerbubble_proto::Opaque>, Option<peerbubble_proto::Opaque>)>,
    /// A bubble that cheats: a claim for member `.0` is answered with a KeyPackage of member `.1`.
    substitute: Option<(usize, usize)>,
}

impl Bubble {
    fn new(n: u8, sees: impl Fn(usize) -> Vec<usize>) -> Self {
        let peers = (0..n)
            .map(|i| {
                let k = key(i + 1);
                let client = Client::new(&k);
                Peer {
                    id: k.public_key().member_id(),
                    session: Session::new(k, Some(BUBBLE.into()), client),
                    open: false,
                    offline: false,
                    sees: sees(usize::from(i)),
                    events: Vec::new(),
                    saves: true,
                    saved_steps: 0,
                }
            })
            .collect();
        Self {
            peers,
            ordered: BTreeSet::new(),
            now: 1_000,
            mailbox: HashMap::new(),
            next_seq: 1,
            keeps_key_packages: false,
            key_packages: HashMap::new(),
            substitute: None,
        }
    }

    /// Keeps a `deliver` for member `j` (away); returns its seq.
    fn keep(&mut self, j: usize, from: usize, body: peerbubble_proto::Opaque) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = ServerFrame::Deliver {
            from: self.peers[from].id,
            from_session: SessionId(from as u64 + 1),
            body,
            seq: Some(seq),
        };
        self.mailbox.entry(j).or_default().push((seq, frame));
        seq
    }

    fn kept(&self, j: usize) -> usize {
        self.mailbox.get(&j).map_or(0, Vec::len)
    }

    fn entry(&self, i: usize) -> DirectoryEntry {
        let k = key(u8::try_from(i).unwrap() + 1);
        DirectoryEntry {
            member: self.peers[i].id,
            public_key: k.public_key(),
            display_name: format!("member {i}"),
            categories: vec!["team".into()],
            online: self.peers[i].open,
        }
    }

    fn index(&self, member: MemberId) -> usize {
        self.peers.iter().position(|p| p.id == member).unwrap()
    }

    fn server_says(&mut self, i: usize, frame: &ServerFrame) {
        let now = self.now;
        self.peers[i].session.handle_text(encode_frame(frame).as_bytes(), now).unwrap();
    }

    /// Moves everything until nobody has anything more to say; the clock advances so that timers fire.
    fn run(&mut self) {
        for _ in 0..200 {
            let mut moved = false;
            for i in 0..self.peers.len() {
                let now = self.now;
                self.peers[i].session.handle_timeout(now);
                while let Some(event) = self.peers[i].session.poll_event() {
                    moved = true;
                    match &event {
                        SessionEvent::Signal(SignalEvent::Connect) => self.connect(i),
                        SessionEvent::Signal(SignalEvent::Disconnect) => {
                            self.peers[i].open = false;
                            self.peers[i].session.disconnected(None, now);
                        }
                        _ => {}
                    }
                    self.peers[i].events.push(event);
                }
                // The edge saves what changed, then says so (which acknowledges what the mailbox delivered).
                if self.peers[i].session.take_changed() {
                    self.peers[i].saved_steps += 1;
                }
                if self.peers[i].saves {
                    self.peers[i].session.saved(now);
                }
                while let Some(text) = self.peers[i].session.poll_transmit() {
                    moved = true;
                    if self.peers[i].open {
                        let frame = decode_client_frame(text.as_bytes(), 1 << 20).unwrap();
                        self.on_frame(i, frame);
                    }
                }
            }
            if !moved {
                // Let back-offs and retries come due.
                self.now += 600;
                if self.peers.iter().all(|p| p.session.poll_timeout().is_none_or(|t| t > self.now + 60_000)) {
                    return;
                }
            }
        }
    }

    fn connect(&mut self, i: usize) {
        let now = self.now;
        if self.peers[i].offline {
            return self.peers[i].session.disconnected(None, now);
        }
        self.peers[i].open = true;
        self.peers[i].session.connected(now);
        let challenge = ServerFrame::Challenge {
            protocol: peerbubble_proto::PROTOCOL_VERSION,
            bubble: BUBBLE.into(),
            nonce: Nonce::from_bytes([7; 32]),
            expires_in_ms: 10_000,
        };
        self.server_says(i, &challenge);
    }

    fn on_frame(&mut self, i: usize, frame: ClientFrame) {
        match frame {
            ClientFrame::Auth { .. } => {
                let welcome = ServerFrame::Welcome {
                    member: self.peers[i].id,
                    session: SessionId(i as u64 + 1),
                    display_name: format!("member {i}"),
                    ice_servers: Vec::new(),
                    ice_expires_in_ms: None,
                    limits: limits(),
                    policy: Default::default(),
                    mailbox_ttl_ms: self.keeps_key_packages.then_some(72 * 3600 * 1000),
                };
                self.server_says(i, &welcome);
                let entries = self.peers[i].sees.iter().map(|&j| self.entry(j)).collect();
                self.server_says(i, &ServerFrame::Directory { part: 0, parts: 1, entries });
                if self.keeps_key_packages {
                    let stock = self.stock(i);
                    self.server_says(i, &stock);
                }
                // What waited, in order, before anything live.
                for (_, frame) in self.mailbox.get(&i).cloned().unwrap_or_default() {
                    self.server_says(i, &frame);
                }
                let member = self.peers[i].id;
                for j in 0..self.peers.len() {
                    if j != i && self.peers[j].open && self.peers[j].sees.contains(&i) {
                        self.server_says(j, &ServerFrame::Presence { member, online: true });
                    }
                }
            }
            ClientFrame::Send { id, to, body, .. } => {
                let j = self.index(to);
                assert!(self.peers[i].sees.contains(&j), "a session sent to a member it does not see");
                let sessions = u32::from(self.peers[j].open);
                if self.peers[j].open {
                    let deliver = ServerFrame::Deliver {
                        from: self.peers[i].id,
                        from_session: SessionId(i as u64 + 1),
                        body,
                        seq: None,
                    };
                    self.server_says(j, &deliver);
                } else {
                    self.keep(j, i, body);
                }
                self.server_says(i, &ServerFrame::Ack { id, sessions, stored: 1 - sessions });
            }
            ClientFrame::Commit { id, group, epoch, to, body } => {
                if !self.ordered.insert((group.as_bytes().to_vec(), epoch)) {
                    let refusal = ServerFrame::Error {
                        code: ErrorCode::CommitConflict,
                        message: "another commit won this epoch".into(),
                        id: Some(id),
                        retry_after_ms: None,
                    };
                    return self.server_says(i, &refusal);
                }
                let away = to.as_slice().iter().filter(|m| !self.peers[self.index(**m)].open).count() as u32;
                let sessions = to.as_slice().len() as u32 - away;
                self.server_says(i, &ServerFrame::Ack { id, sessions, stored: away });
                for member in to.as_slice() {
                    let j = self.index(*member);
                    if self.peers[j].open {
                        let deliver = ServerFrame::Deliver {
                            from: self.peers[i].id,
                            from_session: SessionId(i as u64 + 1),
                            body: body.clone(),
                            seq: None,
                        };
                        self.server_says(j, &deliver);
                    } else {
                        self.keep(j, i, body.clone());
                    }
                }
            }
            ClientFrame::Ping { id } => self.server_says(i, &ServerFrame::Pong { id }),
            ClientFrame::PublishKeyPackage { key_package, last_resort } => {
                assert!(self.keeps_key_packages, "published to a bubble that keeps no KeyPackages");
                let (one_time, last) = self.key_packages.entry(i).or_default();
                if last_resort {
                    *last = Some(key_package);
                } else {
                    one_time.push(key_package);
                }
            }
            ClientFrame::ClaimKeyPackage { id, member } => {
                let mut j = self.index(member);
                assert!(self.peers[i].sees.contains(&j), "a claim for a member it does not see");
                if let Some((_, instead)) = self.substitute.filter(|(of, _)| *of == j) {
                    j = instead;
                }
                let key_package = self.key_packages.get_mut(&j).and_then(|(one_time, last)| {
                    if one_time.is_empty() { last.clone() } else { Some(one_time.remove(0)) }
                });
                self.server_says(i, &ServerFrame::ClaimedKeyPackage { id, member, key_package });
            }
            ClientFrame::Received { upto } => {
                if let Some(kept) = self.mailbox.get_mut(&i) {
                    kept.retain(|(seq, _)| *seq > upto);
                }
            }
        }
    }

    fn stock(&self, i: usize) -> ServerFrame {
        let (one_time, last) = self.key_packages.get(&i).cloned().unwrap_or_default();
        ServerFrame::KeyPackageStock { one_time: one_time.len() as u32, last_resort: last.is_some() }
    }

    fn one_time_kept(&self, i: usize) -> usize {
        self.key_packages.get(&i).map_or(0, |(one_time, _)| one_time.len())
    }

    fn texts(&self, i: usize) -> Vec<String> {
        self.peers[i]
            .events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Core(Event::Message { text, .. }) => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    fn ready(&self, i: usize) -> Vec<ConversationId> {
        self.peers[i]
            .events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Core(Event::ConversationReady { conversation, .. }) => Some(*conversation),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn two_members_set_up_a_conversation_and_talk_through_their_sessions_alone() {
    // A new session's first word is to connect, before any input.
    let k = key(1);
    let mut fresh = Session::new(IdentityKey::from_seed(&k.to_seed()), Some(BUBBLE.into()), Client::new(&k));
    assert_eq!(fresh.poll_event(), Some(SessionEvent::Signal(SignalEvent::Connect)));

    let mut b = Bubble::new(2, |i| vec![1 - i]);
    b.run();
    assert!(b.peers.iter().all(|p| p.session.signaling().is_ready()));
    // The client checks need-to-know against the directory the server sent: nobody else is reachable.
    let stranger = key(9).public_key().member_id();
    let now = b.now;
    assert!(b.peers[0].session.act(now, |c| c.start_direct(stranger)).is_err());

    let bob = b.peers[1].id;
    b.peers[0].session.act(now, |c| c.start_direct(bob)).unwrap();
    b.run();
    let conversation = *b.ready(0).first().expect("ready at the initiator");
    assert_eq!(b.ready(1), [conversation]);
    b.peers[0].session.act(b.now, |c| c.send_text(conversation, "hello through the session")).unwrap();
    b.peers[1].session.act(b.now, |c| c.send_text(conversation, "and back")).unwrap();
    b.run();
    assert_eq!(b.texts(1), ["hello through the session"]);
    assert_eq!(b.texts(0), ["and back"]);
    let before = b.peers[0].saved_steps;
    b.peers[0].session.act(b.now, |c| c.send_text(conversation, "one more")).unwrap();
    b.run();
    assert!(b.peers[0].saved_steps > before, "a step that changed the conversation asks to be saved");
}

/// Two members who see each other, in a 1:1 conversation started by the first.
fn two_in_a_conversation() -> (Bubble, ConversationId) {
    let mut b = Bubble::new(2, |i| vec![1 - i]);
    b.run();
    let bob = b.peers[1].id;
    b.peers[0].session.act(b.now, |c| c.start_direct(bob)).unwrap();
    b.run();
    let conversation = b.ready(0)[0];
    (b, conversation)
}

#[test]
fn envelopes_wait_while_signaling_is_down_and_go_out_once_it_is_back() {
    let (mut b, conversation) = two_in_a_conversation();

    // Alice's connection drops; she writes anyway.
    b.peers[0].open = false;
    let now = b.now;
    b.peers[0].session.disconnected(Some(1006), now);
    b.peers[0].session.act(now, |c| c.send_text(conversation, "written while offline")).unwrap();
    assert!(b.texts(1).is_empty());
    // The session reconnects after its back-off and sends what waited.
    b.run();
    assert!(b.peers[0].session.signaling().is_ready());
    assert_eq!(b.texts(1), ["written while offline"]);
}

#[test]
fn a_conversation_with_a_member_offline_when_asked_starts_when_it_comes_online() {
    let mut b = Bubble::new(2, |i| vec![1 - i]);
    b.peers[1].offline = true;
    b.run();
    assert!(!b.peers[1].session.signaling().is_ready());
    let bob = b.peers[1].id;
    b.peers[0].session.act(b.now, |c| c.start_direct(bob)).unwrap();
    b.run();
    assert!(b.ready(0).is_empty(), "nobody answered the KeyPackage request");
    // Bob's network comes back: his presence makes Alice ask again, and the conversation is set up.
    b.peers[1].offline = false;
    b.run();
    let conversation = *b.ready(0).first().expect("ready once Bob is online");
    assert_eq!(b.ready(1), [conversation]);
}

#[test]
fn simultaneous_commits_are_ordered_and_both_changes_land() {
    // Three members who all see each other; 0 makes a group with 1, then 0 and 1 both add 2 at once.
    let mut b = Bubble::new(3, |i| (0..3).filter(|j| *j != i).collect());
    b.run();
    let (one, two) = (b.peers[1].id, b.peers[2].id);
    let group = b.peers[0].session.act(b.now, |c| c.create_group("cell", &[one])).unwrap();
    b.run();
    assert!(b.ready(1).contains(&group));
    let now = b.now;
    b.peers[0].session.act(now, |c| c.add_member(group, two)).unwrap();
    b.peers[0].session.act(now, |c| c.update_keys(group)).unwrap();
    b.peers[1].session.act(now, |c| c.update_keys(group)).unwrap();
    b.run();
    assert!(b.ready(2).contains(&group), "the add survived the race");
    b.peers[1].session.act(b.now, |c| c.send_text(group, "all three")).unwrap();
    b.run();
    assert_eq!(b.texts(0), ["all three"]);
    assert_eq!(b.texts(2), ["all three"]);
    let epochs: HashMap<usize, u64> = (0..3).map(|i| (i, b.peers[i].session.client().epoch(group).unwrap())).collect();
    assert!(epochs.values().all(|e| *e == epochs[&0]), "{epochs:?}");
}

#[test]
fn a_member_refused_for_good_stops_and_nothing_is_relayed() {
    let mut b = Bubble::new(2, |i| vec![1 - i]);
    b.run();
    let removed = ServerFrame::Error {
        code: ErrorCode::MemberRemoved,
        message: "removed from the bubble".into(),
        id: None,
        retry_after_ms: None,
    };
    b.server_says(0, &removed);
    b.peers[0].open = false;
    let now = b.now;
    b.peers[0].session.disconnected(Some(4001), now);
    b.run();
    assert_eq!(b.peers[0].session.signaling().stopped(), Some(ErrorCode::MemberRemoved));
    let bob = b.peers[1].id;
    b.peers[0].session.act(b.now, |c| c.start_direct(bob)).unwrap();
    b.run();
    assert!(
        b.peers[0].events.iter().any(|e| matches!(e, SessionEvent::Undeliverable { to, .. } if *to == bob)),
        "the member is told the envelope cannot go out"
    );
    assert!(b.ready(1).is_empty());
}

/// Member `i`'s tab closes: its session ends and those who see it are told it went offline.
fn away(b: &mut Bubble, i: usize) {
    b.peers[i].offline = true;
    b.peers[i].open = false;
    let now = b.now;
    b.peers[i].session.disconnected(Some(1001), now);
    let member = b.peers[i].id;
    for j in 0..b.peers.len() {
        if j != i && b.peers[j].open && b.peers[j].sees.contains(&i) {
            b.server_says(j, &ServerFrame::Presence { member, online: false });
        }
    }
}

#[test]
fn an_absent_member_reads_what_waited_in_order_and_it_is_deleted_once_saved() {
    let (mut b, conversation) = two_in_a_conversation();
    let bob = b.peers[1].id;

    // Bob closes his tab; Alice writes 20 messages: each is "stored for later", none lost.
    away(&mut b, 1);
    b.run();
    for n in 0..20 {
        b.peers[0].session.act(b.now, |c| c.send_text(conversation, &format!("message {n}"))).unwrap();
    }
    b.run();
    let stored = b.peers[0].events.iter().filter(|e| matches!(e, SessionEvent::StoredForLater { to } if *to == bob));
    assert!(stored.count() >= 20, "every message is acknowledged as stored for later");
    assert!(b.kept(1) >= 20, "the mailbox holds them: {}", b.kept(1));
    assert!(b.texts(1).is_empty());

    // Bob comes back: all 20, in order, and the mailbox is emptied by his acknowledgement after the save.
    b.peers[1].offline = false;
    b.run();
    let expected: Vec<String> = (0..20).map(|n| format!("message {n}")).collect();
    assert_eq!(b.texts(1), expected);
    assert_eq!(b.kept(1), 0, "acknowledged once saved, then deleted");
}

#[test]
fn what_was_not_acknowledged_comes_again_and_is_read_once() {
    let (mut b, conversation) = two_in_a_conversation();
    away(&mut b, 1);
    b.run();
    b.peers[0].session.act(b.now, |c| c.send_text(conversation, "kept for Bob")).unwrap();
    b.run();

    // Bob's edge never gets to save (the tab closes at once): nothing is acknowledged, nothing deleted.
    b.peers[1].saves = false;
    b.peers[1].offline = false;
    b.run();
    assert_eq!(b.texts(1), ["kept for Bob"]);
    assert_eq!(b.kept(1), 1, "not acknowledged without a save");
    // Next connection: the same envelope again; the message is not shown twice, and now it is acknowledged.
    b.peers[1].saves = true;
    away(&mut b, 1);
    b.run();
    b.peers[1].offline = false;
    b.run();
    assert_eq!(b.texts(1), ["kept for Bob"], "a replayed envelope changes nothing");
    assert_eq!(b.kept(1), 0);
}

#[test]
fn a_gap_in_the_mailbox_asks_to_rejoin_the_groups_that_lost_commits() {
    let mut b = Bubble::new(3, |i| (0..3).filter(|j| *j != i).collect());
    b.run();
    let (one, two) = (b.peers[1].id, b.peers[2].id);
    let group = b.peers[0].session.act(b.now, |c| c.create_group("cell", &[one, two])).unwrap();
    b.run();
    assert!(b.ready(2).contains(&group));
    away(&mut b, 2);
    b.run();
    // While member 2 is away, the bubble lost a commit of the group it kept for it (say it expired).
    let seq = b.next_seq;
    b.next_seq += 1;
    let gap = ServerFrame::Gap { seq, lost: 3, groups: vec![peerbubble_proto::GroupId::from_bytes(&group.0).unwrap()] };
    b.mailbox.entry(2).or_default().push((seq, gap));
    b.peers[2].offline = false;
    b.run();
    assert!(b.peers[2].events.iter().any(|e| matches!(e, SessionEvent::MissedWhileAway { lost: 3 })));
    assert!(
        b.peers[2].events.iter().any(
            |e| matches!(e, SessionEvent::Core(Event::RejoinRequested { conversation, .. }) if *conversation == group)
        ),
        "member 2 asked to be added again"
    );
    assert_eq!(b.kept(2), 0, "the gap marker is acknowledged like an envelope");
}

#[test]
fn a_member_gone_offline_gets_messages_through_the_mailbox_even_while_its_channel_looks_open() {
    let (mut b, conversation) = two_in_a_conversation();
    let (alice, bob) = (b.peers[0].id, b.peers[1].id);
    // A DataChannel between them: messages take it.
    let now = b.now;
    b.peers[0].session.channel(bob, true, now);
    b.peers[1].session.channel(alice, true, now);
    b.peers[0].session.act(b.now, |c| c.send_text(conversation, "over the channel")).unwrap();
    let channel_sends = |b: &Bubble| {
        b.peers[0].events.iter().filter(|e| matches!(e, SessionEvent::ChannelSend { to, .. } if *to == bob)).count()
    };
    b.run();
    assert_eq!(channel_sends(&b), 1);
    // Bob's tab closes: his channel dies silently, but signaling says he is gone. Alice's next messages take the
    // relay, and wait for him in the mailbox.
    away(&mut b, 1);
    b.run();
    b.peers[0].session.act(b.now, |c| c.send_text(conversation, "kept for later")).unwrap();
    b.run();
    assert_eq!(channel_sends(&b), 1, "nothing more on the dead channel");
    assert!(b.kept(1) >= 1);
    b.peers[1].offline = false;
    b.run();
    // What the dead channel swallowed (never confirmed by a receipt) was sent again through the relay when Bob
    // went offline: nothing is lost, in order.
    assert_eq!(b.texts(1), ["over the channel", "kept for later"]);
}

#[test]
fn a_channel_send_that_fails_takes_the_relay_and_a_file_chunk_does_not() {
    let (mut b, conversation) = two_in_a_conversation();
    let (alice, bob) = (b.peers[0].id, b.peers[1].id);
    let now = b.now;
    b.peers[0].session.channel(bob, true, now);
    b.peers[1].session.channel(alice, true, now);
    b.peers[0].session.act(b.now, |c| c.send_text(conversation, "the channel just closed")).unwrap();
    b.run();
    // The edge could not put it on the channel (closed meanwhile): the same bytes go through the relay.
    let bytes = b.peers[0]
        .events
        .iter()
        .find_map(|e| match e {
            SessionEvent::ChannelSend { to, bytes } if *to == bob => Some(bytes.clone()),
            _ => None,
        })
        .expect("sent on the channel");
    assert!(b.texts(1).is_empty(), "nothing arrived: the channel swallowed it");
    assert!(b.peers[0].session.channel_send_failed(bob, bytes, now));
    b.run();
    assert_eq!(b.texts(1), ["the channel just closed"]);
    // A file chunk is not relayed (the receiver asks to resume once a channel is back), nor is anything too
    // large for the relay.
    let chunk = vec![peerbubble_client_core::files::CHUNK_FRAME_TAG, 1, 2, 3];
    assert!(!b.peers[0].session.channel_send_failed(bob, chunk, now));
    let large = vec![0u8; peerbubble_client_core::client::MAX_RELAY_BODY + 1];
    assert!(!b.peers[0].session.channel_send_failed(bob, large, now));
    b.run();
    assert_eq!(b.texts(1), ["the channel just closed"]);
}

/// Three members who all see each other, in a bubble that keeps KeyPackages, every one connected once (so each
/// published its stock), then member 2 (Carol) away.
fn carol_away() -> Bubble {
    let mut b = Bubble::new(3, |i| (0..3).filter(|j| *j != i).collect());
    b.keeps_key_packages = true;
    b.run();
    for i in 0..3 {
        assert_eq!(b.one_time_kept(i), peerbubble_proto::limits::KEY_PACKAGES_KEPT, "member {i} topped its stock up");
        assert!(b.key_packages[&i].1.is_some(), "member {i} published a last-resort KeyPackage");
    }
    away(&mut b, 2);
    b.run();
    b
}

fn groups_ready(b: &Bubble, i: usize) -> BTreeSet<ConversationId> {
    b.ready(i).into_iter().collect()
}

#[test]
fn a_member_away_is_added_from_a_key_package_it_published_and_reads_what_waited() {
    let mut b = carol_away();
    let (bob, carol) = (b.peers[1].id, b.peers[2].id);

    // Alice makes a group with Bob (online: asked directly) and Carol (away: her KeyPackage claimed from the
    // bubble), and writes to it at once.
    let group = b.peers[0].session.act(b.now, |c| c.create_group("night shift", &[bob, carol])).unwrap();
    b.run();
    assert_eq!(b.one_time_kept(2), peerbubble_proto::limits::KEY_PACKAGES_KEPT - 1, "one of Carol's was claimed");
    assert_eq!(b.one_time_kept(1), peerbubble_proto::limits::KEY_PACKAGES_KEPT, "Bob, online, was asked directly");
    let mut members = b.peers[0].session.client().members(group).unwrap();
    members.sort_unstable();
    let mut expected = vec![bob, carol];
    expected.sort_unstable();
    assert_eq!(members, expected, "Carol is in the group while away");
    b.peers[0].session.act(b.now, |c| c.send_text(group, "muster at the north gate")).unwrap();
    b.run();
    assert!(b.ready(2).is_empty());
    assert!(b.kept(2) >= 3, "her Welcome, the commit adding Bob or her and the message wait: {}", b.kept(2));

    // Carol returns: she joins from the Welcome, reads the message, and tops her stock up again.
    b.peers[2].offline = false;
    b.run();
    assert!(b.ready(2).contains(&group));
    assert_eq!(b.texts(2), ["muster at the north gate"]);
    assert_eq!(b.peers[2].session.client().epoch(group).unwrap(), b.peers[0].session.client().epoch(group).unwrap());
    assert_eq!(b.one_time_kept(2), peerbubble_proto::limits::KEY_PACKAGES_KEPT, "topped up on return");
    assert_eq!(b.kept(2), 0);
    b.peers[2].session.act(b.now, |c| c.send_text(group, "on my way")).unwrap();
    b.run();
    assert_eq!(b.texts(0), ["on my way"]);
    assert_eq!(b.texts(1), ["muster at the north gate", "on my way"]);
}

#[test]
fn the_last_resort_key_package_serves_when_the_one_time_ones_are_gone_and_serves_again() {
    let mut b = carol_away();
    let carol = b.peers[2].id;
    let n = peerbubble_proto::limits::KEY_PACKAGES_KEPT;
    // More groups than Carol left one-time KeyPackages: the last ones are made from her last-resort one, which
    // stays in the bubble.
    let mut groups = BTreeSet::new();
    for g in 0..n + 2 {
        groups.insert(b.peers[0].session.act(b.now, |c| c.create_group(&format!("team {g}"), &[carol])).unwrap());
        b.run();
    }
    assert_eq!(b.one_time_kept(2), 0);
    assert!(b.key_packages[&2].1.is_some(), "the last resort is not handed out once only");
    for g in &groups {
        assert_eq!(b.peers[0].session.client().members(*g).unwrap(), [carol], "Carol added to {g:?} while away");
    }
    assert!(
        !b.peers[0].events.iter().any(|e| matches!(e, SessionEvent::Core(Event::Refused { .. }))),
        "no KeyPackage refused"
    );
    // And Bob opens a 1:1 conversation with her, from the last resort too.
    b.peers[1].session.act(b.now, |c| c.start_direct(carol)).unwrap();
    b.run();
    let direct = b.peers[1].session.client().direct_conversation(carol);
    let direct = direct.unwrap_or_else(|| panic!("set up while Carol is away: {:?}", b.peers[1].events));
    b.peers[1].session.act(b.now, |c| c.send_text(direct, "call me when you are back")).unwrap();
    b.run();

    b.peers[2].offline = false;
    b.run();
    let joined = groups_ready(&b, 2);
    assert!(groups.is_subset(&joined), "Carol is in every group: {} of {}", joined.len(), groups.len());
    assert!(joined.contains(&direct));
    assert_eq!(b.texts(2), ["call me when you are back"]);
    assert_eq!(b.one_time_kept(2), n, "topped up on return");
}

#[test]
fn a_key_package_the_bubble_substitutes_is_refused_and_the_member_is_asked_itself() {
    let mut b = carol_away();
    let (bob, carol) = (b.peers[1].id, b.peers[2].id);
    // The bubble answers a claim for Carol with one of Bob's KeyPackages (it cannot forge Carol's signature).
    b.substitute = Some((2, 1));
    let group = b.peers[0].session.act(b.now, |c| c.create_group("cell", &[carol])).unwrap();
    b.run();
    assert!(b.peers[0].session.client().members(group).unwrap().is_empty(), "nobody added from a forged KeyPackage");
    assert!(
        b.peers[0]
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::Core(Event::Refused { from, .. }) if *from == carol)),
        "the refusal names whose KeyPackage it claimed to be"
    );
    assert!(!b.ready(1).contains(&group), "Bob was not added in Carol's place");
    let _ = bob;
    // Carol was asked herself (the request waits for her); she answers when she returns and is added.
    b.substitute = None;
    b.peers[2].offline = false;
    b.run();
    assert!(b.ready(2).contains(&group));
    assert_eq!(b.peers[0].session.client().members(group).unwrap(), [carol]);
}
