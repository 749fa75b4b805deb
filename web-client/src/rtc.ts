// The page's side of WebRTC. RTCPeerConnection exists only in windows, so the page makes the connections the
// worker asks for. Each DataChannel is handed to the worker as soon as it exists (transferred, where the browser
// can: Chromium and WebKit), so its bytes — MLS ciphertext the worker made or will open — never pass through the
// page; where it cannot, the page carries them.
// What a connection is bound to is decided in the worker: the SDP travels inside MLS, and the certificate the
// DTLS handshake presented is checked there against the one the contact announced before the channel is used.
import type { Command, MemberId, RtcNotice } from './protocol';

/** How a contact is reached: setting up, directly, or through the bubble's TURN relay. */
export type LinkState = 'connecting' | 'direct' | 'relayed';

/** The one DataChannel a PeerBubble connection carries (the native peer's label). */
const CHANNEL_LABEL = 'peerbubble';
/** Candidates of the contact that came before its offer or answer was applied, kept until it is (per contact). */
const MAX_EARLY_CANDIDATES = 32;
/** An offer or answer waits for its first candidate at most this long (TURN allocation for a relay-only device). */
const FIRST_CANDIDATE_MS = 500;
/** A connection not yet open that ICE reports failed gets this long for the contact's trickled candidates. */
const FAILED_GRACE_MS = 5_000;
/** A connection not open by then is given up (and tried again by the side that offered). */
const CONNECT_TIMEOUT_MS = 30_000;
/** The side that offered tries again after these pauses, then waits for the contact's next presence. */
const RETRY_MS = [2_000, 10_000, 30_000];
/** This device's choice to reach contacts only through the bubble's relay (hides its addresses from them). */
const RELAY_ONLY_KEY = 'peerbubble.relayOnly';

interface Link {
  pc: RTCPeerConnection;
  /** The DataChannel, while the page carries its bytes. */
  channel?: RTCDataChannel;
  /** The DataChannel was handed to the worker: it carries the bytes, the page hears of it opening and closing. */
  inWorker?: boolean;
  state: LinkState;
  /** This side offered (the worker asked it to): it is the one that tries again after a failure. */
  offered: boolean;
  /** Gives the connection up if it does not open in time. */
  timer: ReturnType<typeof setTimeout>;
  /** What arrived before the certificate was checked: handed to the worker only once it was. */
  early: Uint8Array[];
  /** Set up ahead of the conversation (`prepare`): its offer waits until the worker asks for it. */
  held?: boolean;
  /** Our offer or answer left: candidates gathered from now on are trickled to the contact (inside MLS). Those
   * gathered before are in the description that left. */
  described?: boolean;
  /** At least one candidate was gathered. */
  gatheredOne?: boolean;
  /** Ends the connection if ICE still reports it failed (see FAILED_GRACE_MS). */
  failedTimer?: ReturnType<typeof setTimeout>;
  /** Tracks the contact sends us during a call. */
  remote: MediaStream;
  /** What we send during a call, by kind ('audio', 'video'). */
  senders: Map<string, { sender: RTCRtpSender; track: MediaStreamTrack }>;
}

export class PeerLinks {
  private readonly links = new Map<MemberId, Link>();
  /** Failed attempts in a row, per contact (the side that offers retries). */
  private readonly attempts = new Map<MemberId, number>();
  /** Offers set up ahead of their conversation, by contact: the link, or null if that failed. */
  private readonly preparing = new Map<MemberId, Promise<{ link: Link } | null>>();
  /** The tracks to answer a contact's offer with, when it adds media and we send none to it yet (the callee's
   * side of a call: set by the call manager). */
  mediaFor: (peer: MemberId) => MediaStream | null = () => null;
  /** Told once our tracks were added in an answer (the call manager then applies mute, camera off, a shared
   * screen to that connection). */
  onMediaAnswered: (peer: MemberId) => void = () => undefined;
  /** Told when the connection with a contact ends (a call on it ends too). */
  onClosed: (peer: MemberId) => void = () => undefined;
  /** Hands a DataChannel to the worker (transferred); false where the browser cannot transfer one. */
  handOver: (peer: MemberId, channel: RTCDataChannel) => boolean = () => false;
  /** Whether DataChannels go to the worker (until a transfer fails once). */
  private transfers = true;
  /** The contact's trickled candidates that came before its description was applied here. */
  private readonly earlyCandidates = new Map<MemberId, string[]>();
  /** Candidates trickled, both ways (diagnostics; tests read it). */
  readonly trickled = { sent: 0, received: 0 };

  constructor(
    private readonly send: (command: Command) => Promise<unknown>,
    private readonly changed: () => void,
  ) {}

  /** The bubble's policy requires relayed connections (from the worker's view; client-side, as every rule). */
  private required = false;

  /** Whether this device reaches contacts only through the bubble's relay: its own choice, or the bubble's rule. */
  get relayOnly(): boolean {
    return this.required || localStorage.getItem(RELAY_ONLY_KEY) === '1';
  }

  /** Whether the bubble's policy imposes relayed connections (the member cannot turn them off). */
  get relayRequired(): boolean {
    return this.required;
  }

  /** Applies the bubble's relay-only rule: connections open now are set up again through the relay. */
  setRelayRequired(on: boolean): void {
    if (on === this.required) return;
    const before = this.relayOnly;
    this.required = on;
    if (this.relayOnly !== before) this.reconnectAll();
    this.changed();
  }

  /** Changes the choice and sets up again the connections that are open, with the new policy. */
  setRelayOnly(on: boolean): void {
    localStorage.setItem(RELAY_ONLY_KEY, on ? '1' : '0');
    this.reconnectAll();
    this.changed();
  }

  private reconnectAll(): void {
    // Set up again with the new policy: the side that offered offers again; the other hangs up, and the
    // offering side, told so, tries again (one side offers, so the two never offer at once). An offer held for
    // a conversation still being set up is dropped: the worker asks for one when it is ready.
    for (const [peer, link] of [...this.links]) {
      const held = link.held === true;
      this.close(peer, true);
      if (link.offered && !held) void this.offer(peer);
    }
  }

  /**
   * Gathers ICE for an offer to `peer` before the worker asks for it: the member opened a contact with whom
   * there is no conversation yet, and this side, which opens it, offers once there is one. The
   * MLS conversation and the gathering (TURN allocations included) then go on at the same time. Nothing leaves
   * the page before the worker asks (`rtcWanted`); the offer then goes inside MLS as any other, with what was
   * gathered by then, and what is gathered later follows it. Not asked for within CONNECT_TIMEOUT_MS, it is
   * dropped without a word to anyone.
   */
  prepare(peer: MemberId): void {
    if (this.links.has(peer) || this.preparing.has(peer)) return;
    const ready = (async () => {
      try {
        const link = await this.connection(peer, true);
        link.held = true;
        this.adopt(peer, link, link.pc.createDataChannel(CHANNEL_LABEL, { ordered: true }));
        await link.pc.setLocalDescription(await link.pc.createOffer());
        return this.links.get(peer) === link ? { link } : null;
      } catch {
        return null;
      }
    })();
    this.preparing.set(peer, ready);
  }

  /** The worker asks for the connection an offer was prepared for: it goes out now. */
  private async offerPrepared(peer: MemberId, prepared: Promise<{ link: Link } | null>): Promise<void> {
    const ready = await prepared;
    if (this.preparing.get(peer) === prepared) this.preparing.delete(peer);
    if (!ready || this.links.get(peer) !== ready.link) {
      // Dropped or failed meanwhile: offer as if nothing had been prepared.
      if (!this.links.has(peer)) {
        this.attempts.delete(peer);
        void this.offer(peer);
      }
      return;
    }
    ready.link.held = false;
    try {
      await this.describe(peer, ready.link, 'rtcOffer');
    } catch {
      this.fail(peer, ready.link);
    }
  }

  state(peer: MemberId): LinkState | null {
    return this.links.get(peer)?.state ?? null;
  }

  handle(notice: RtcNotice): void {
    switch (notice.type) {
      case 'rtcWanted': {
        if (notice.afterMs !== undefined) {
          // The contact should offer: only if nothing came from it (or from us) meanwhile.
          const peer = notice.peer;
          setTimeout(() => {
            if (!this.links.has(peer) && !this.preparing.has(peer)) this.handle({ type: 'rtcWanted', peer });
          }, notice.afterMs);
          return;
        }
        const prepared = this.preparing.get(notice.peer);
        if (prepared) {
          void this.offerPrepared(notice.peer, prepared);
          return;
        }
        if (!this.links.has(notice.peer)) {
          this.attempts.delete(notice.peer);
          void this.offer(notice.peer);
        }
        return;
      }
      case 'rtcOffer': {
        const link = this.links.get(notice.peer);
        // An open connection set up again (a call adds its tracks): same certificate, same ICE.
        if (link && link.state !== 'connecting' && link.pc.signalingState === 'stable') void this.reanswer(notice.peer, link, notice.sdp);
        else void this.answer(notice.peer, notice.sdp);
        return;
      }
      case 'rtcAnswer': {
        const link = this.links.get(notice.peer);
        if (!link || link.pc.signalingState !== 'have-local-offer') return;
        link.pc
          .setRemoteDescription({ type: 'answer', sdp: notice.sdp })
          .then(() => this.applyEarlyCandidates(notice.peer, link))
          .catch(() => this.fail(notice.peer, link));
        return;
      }
      case 'rtcCandidate': {
        this.trickled.received++;
        const link = this.links.get(notice.peer);
        if (link?.pc.remoteDescription) {
          this.addCandidate(link, notice.candidate);
          return;
        }
        // The contact's description is still being applied (or its offer is about to be): kept until it is.
        const early = this.earlyCandidates.get(notice.peer) ?? [];
        if (early.length < MAX_EARLY_CANDIDATES) early.push(notice.candidate);
        this.earlyCandidates.set(notice.peer, early);
        return;
      }
      case 'rtcHangup': {
        const offered = this.links.get(notice.peer)?.offered ?? false;
        this.close(notice.peer, false);
        if (offered) this.retry(notice.peer);
        return;
      }
    }
  }

  /** Whether we send media to `peer` (a call's tracks were added to the connection). */
  sendsMedia(peer: MemberId, key?: string): boolean {
    const senders = this.links.get(peer)?.senders;
    return key ? (senders?.has(key) ?? false) : (senders?.size ?? 0) > 0;
  }

  /** How many open connections have their DataChannel in the worker (diagnostics; tests read it). */
  channelsInWorker(): number {
    return [...this.links.values()].filter((l) => l.inWorker && l.state !== 'connecting').length;
  }

  /** Whether the connection with `peer` is open (media can be added to it). */
  isOpen(peer: MemberId): boolean {
    const state = this.links.get(peer)?.state;
    return state === 'direct' || state === 'relayed';
  }

  /** The tracks `peer` sends us. */
  remoteStream(peer: MemberId): MediaStream | null {
    return this.links.get(peer)?.remote ?? null;
  }

  /** The connection itself, for its statistics (the call screen's quality line; tests read it too). */
  peerConnection(peer: MemberId): RTCPeerConnection | null {
    return this.links.get(peer)?.pc ?? null;
  }

  /** Caller: adds `stream`'s tracks to the open connection and sets it up again (offer inside MLS). */
  async sendMedia(peer: MemberId, stream: MediaStream): Promise<void> {
    const link = this.links.get(peer);
    if (!link || !this.isOpen(peer)) throw new Error('no open connection');
    for (const track of stream.getTracks()) link.senders.set(track.kind, { sender: link.pc.addTrack(track, stream), track });
    await link.pc.setLocalDescription(await link.pc.createOffer());
    const sdp = link.pc.localDescription?.sdp;
    if (!sdp) throw new Error('no local description');
    await this.send({ kind: 'rtcOffer', member: peer, sdp });
  }

  /** Adds one more track (a shared screen) to a call under way and sets the connection up again. */
  async addTrack(peer: MemberId, key: string, track: MediaStreamTrack, stream: MediaStream): Promise<void> {
    const link = this.links.get(peer);
    if (!link || !this.isOpen(peer)) throw new Error('no open connection');
    const existing = link.senders.get(key);
    if (existing) {
      await existing.sender.replaceTrack(track);
      link.senders.set(key, { sender: existing.sender, track });
      return;
    }
    link.senders.set(key, { sender: link.pc.addTrack(track, stream), track });
    await link.pc.setLocalDescription(await link.pc.createOffer());
    const sdp = link.pc.localDescription?.sdp;
    if (!sdp) throw new Error('no local description');
    await this.send({ kind: 'rtcOffer', member: peer, sdp });
  }

  /** Starts or stops sending one kind of track (stopping sends no bytes at all, unlike a disabled track). */
  async setSending(peer: MemberId, kind: string, on: boolean): Promise<void> {
    const sent = this.links.get(peer)?.senders.get(kind);
    if (sent) await sent.sender.replaceTrack(on ? sent.track : null);
  }

  /** Puts another device's track in place of the one sent as `key` (sent at once unless that kind is off). */
  async replaceTrack(peer: MemberId, key: string, track: MediaStreamTrack, on: boolean): Promise<void> {
    const sent = this.links.get(peer)?.senders.get(key);
    if (!sent) return;
    sent.track = track;
    if (on) await sent.sender.replaceTrack(track);
  }

  /** The call is over: nothing more is sent, and what the contact sent is ended here. */
  stopMedia(peer: MemberId): void {
    const link = this.links.get(peer);
    if (!link) return;
    for (const { sender } of link.senders.values()) void sender.replaceTrack(null).catch(() => undefined);
    link.senders.clear();
    for (const track of link.remote.getTracks()) {
      track.stop();
      link.remote.removeTrack(track);
    }
    this.changed();
  }

  /** An envelope the worker routed to the DataChannel with `to`. */
  deliver(to: MemberId, bytes: Uint8Array): void {
    const channel = this.links.get(to)?.channel;
    if (channel?.readyState !== 'open') return;
    try {
      channel.send(bytes as Uint8Array<ArrayBuffer>);
    } catch {
      // Buffer full or closing: the worker sends through the relay again once it hears the channel closed.
      this.close(to, true);
    }
  }

  /** Every connection ends (the key store was locked); the worker is not told, it is gone. */
  closeAll(): void {
    for (const link of this.links.values()) {
      clearTimeout(link.timer);
      clearTimeout(link.failedTimer);
      link.channel?.close();
      link.pc.close();
    }
    this.links.clear();
    this.attempts.clear();
    this.preparing.clear();
    this.earlyCandidates.clear();
    this.changed();
  }

  private async connection(peer: MemberId, offered: boolean): Promise<Link> {
    this.close(peer, false);
    const iceServers = (await this.send({ kind: 'iceServers' })) as RTCIceServer[];
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: this.relayOnly ? 'relay' : 'all' });
    const timer = setTimeout(() => {
      if (this.links.get(peer) === link && link.state === 'connecting') this.fail(peer, link);
    }, CONNECT_TIMEOUT_MS);
    const link: Link = { pc, state: 'connecting', offered, timer, early: [], remote: new MediaStream(), senders: new Map() };
    this.links.set(peer, link);
    pc.onicecandidate = (e: RTCPeerConnectionIceEvent) => {
      // Gathered after our description left: it follows, inside MLS. Before, it is in the description.
      const candidate = e.candidate?.candidate;
      if (candidate) link.gatheredOne = true;
      if (!candidate || !link.described || this.links.get(peer) !== link) return;
      this.trickled.sent++;
      void this.send({ kind: 'rtcCandidate', member: peer, candidate }).catch(() => undefined);
    };
    pc.onconnectionstatechange = () => {
      if (this.links.get(peer) !== link) return;
      clearTimeout(link.failedTimer);
      if (pc.connectionState === 'closed') this.fail(peer, link);
      if (pc.connectionState !== 'failed') return;
      // A connection being set up fails at once when ICE has no pair yet (a relay-only device, whose only
      // candidate cannot reach what the contact's description named): the contact's trickled candidates may
      // still make one, and ICE then checks again. An open connection that fails ends at once.
      if (link.state === 'connecting') {
        link.failedTimer = setTimeout(() => {
          if (this.links.get(peer) === link && pc.connectionState === 'failed') this.fail(peer, link);
        }, FAILED_GRACE_MS);
      } else {
        this.fail(peer, link);
      }
    };
    pc.ontrack = (e) => {
      link.remote.addTrack(e.track);
      e.track.onended = () => this.changed();
      this.changed();
    };
    pc.ondatachannel = (e) => {
      if (e.channel.label === CHANNEL_LABEL && !link.channel && !link.inWorker) this.adopt(peer, link, e.channel);
      else e.channel.close();
    };
    this.changed();
    return link;
  }

  private async offer(peer: MemberId): Promise<void> {
    try {
      const link = await this.connection(peer, true);
      this.adopt(peer, link, link.pc.createDataChannel(CHANNEL_LABEL, { ordered: true }));
      await link.pc.setLocalDescription(await link.pc.createOffer());
      if (this.links.get(peer) === link) await this.describe(peer, link, 'rtcOffer');
    } catch {
      const link = this.links.get(peer);
      if (link) this.fail(peer, link);
    }
  }

  private async answer(peer: MemberId, sdp: string): Promise<void> {
    try {
      const link = await this.connection(peer, false);
      await link.pc.setRemoteDescription({ type: 'offer', sdp });
      this.applyEarlyCandidates(peer, link);
      await link.pc.setLocalDescription(await link.pc.createAnswer());
      if (this.links.get(peer) === link) await this.describe(peer, link, 'rtcAnswer');
    } catch {
      this.close(peer, true);
    }
  }

  /** Answers an offer on the open connection (the certificate was checked when it opened). */
  private async reanswer(peer: MemberId, link: Link, sdp: string): Promise<void> {
    try {
      await link.pc.setRemoteDescription({ type: 'offer', sdp });
      const stream = link.senders.size === 0 ? this.mediaFor(peer) : null;
      if (stream) for (const track of stream.getTracks()) link.senders.set(track.kind, { sender: link.pc.addTrack(track, stream), track });
      await link.pc.setLocalDescription(await link.pc.createAnswer());
      const answer = link.pc.localDescription?.sdp;
      if (!answer) throw new Error('no local description');
      if (this.links.get(peer) === link) await this.send({ kind: 'rtcAnswer', member: peer, sdp: answer });
      if (stream) this.onMediaAnswered(peer);
    } catch {
      this.close(peer, true);
    }
  }

  /** What the worker says of a DataChannel it holds. */
  channelEvent(peer: MemberId, event: 'open' | 'closed' | 'failed'): void {
    const link = this.links.get(peer);
    if (!link?.inWorker) return;
    if (event === 'open') void this.opened(peer, link);
    else if (event === 'closed') this.fail(peer, link);
    // A send the channel's buffer refused: the connection is ended (the worker relays what it had not confirmed).
    else this.close(peer, true);
  }

  /** Takes a new DataChannel: to the worker (in the task that made it, as a transfer requires), else here. */
  private adopt(peer: MemberId, link: Link, channel: RTCDataChannel): void {
    if (this.transfers && this.handOver(peer, channel)) {
      link.inWorker = true;
      return;
    }
    this.transfers = false;
    link.channel = channel;
    channel.binaryType = 'arraybuffer';
    channel.onopen = () => void this.opened(peer, link);
    channel.onmessage = (e: MessageEvent) => {
      if (!(e.data instanceof ArrayBuffer) || e.data.byteLength === 0) return;
      const bytes = new Uint8Array(e.data);
      if (link.state === 'connecting') {
        if (link.early.length < 64) link.early.push(bytes);
        return;
      }
      void this.send({ kind: 'channelData', member: peer, bytes }).catch(() => undefined);
    };
    channel.onclose = () => {
      if (this.links.get(peer) === link) this.fail(peer, link);
    };
  }

  /** The channel is open: the worker checks the DTLS certificate before any envelope uses it. */
  private async opened(peer: MemberId, link: Link): Promise<void> {
    try {
      const certificate = link.pc.sctp?.transport.getRemoteCertificates()[0];
      if (!certificate) throw new Error('no DTLS certificate');
      const bound = await this.send({ kind: 'rtcVerify', member: peer, certificate: new Uint8Array(certificate) });
      if (bound !== true) throw new Error('not the announced certificate');
      await this.send({ kind: 'channel', member: peer, open: true });
      link.state = await path(link.pc);
      clearTimeout(link.timer);
      this.attempts.delete(peer);
      for (const bytes of link.early.splice(0)) {
        void this.send({ kind: 'channelData', member: peer, bytes }).catch(() => undefined);
      }
      this.changed();
    } catch {
      this.close(peer, false);
    }
  }

  /**
   * Sends our offer or answer as it is now, with the candidates gathered so far: the rest follow as they come
   * (`onicecandidate`), so neither side waits for the other's gathering (TURN allocations included). The
   * description is read and `described` set in one go, so a candidate is either in it or trickled, never lost.
   */
  private async describe(peer: MemberId, link: Link, kind: 'rtcOffer' | 'rtcAnswer'): Promise<unknown> {
    // Not without any candidate: the contact's ICE would have nothing to check until the first one trickled.
    await firstCandidate(link);
    if (this.links.get(peer) !== link) return null;
    const sdp = link.pc.localDescription?.sdp;
    if (!sdp) throw new Error('no local description');
    link.described = true;
    return this.send({ kind, member: peer, sdp });
  }

  /** The contact's candidates that came before its description was applied. */
  private applyEarlyCandidates(peer: MemberId, link: Link): void {
    const early = this.earlyCandidates.get(peer);
    this.earlyCandidates.delete(peer);
    for (const candidate of early ?? []) this.addCandidate(link, candidate);
  }

  /** One trickled candidate of the contact (a bundled connection: all of them belong to its first section). */
  private addCandidate(link: Link, candidate: string): void {
    // One the browser cannot use (another address family, a closed connection) changes nothing else.
    link.pc.addIceCandidate({ candidate, sdpMLineIndex: 0 }).catch(() => undefined);
  }

  /** The connection failed or dropped: end it, tell the contact, and try again if this side offered. */
  private fail(peer: MemberId, link: Link): void {
    if (this.links.get(peer) !== link) return;
    const held = link.held === true;
    this.close(peer, true);
    // A prepared offer nobody asked for yet is not retried: the worker asks when the conversation is ready.
    if (link.offered && !held) this.retry(peer);
  }

  /** Offers again after a pause, a few times; then the contact's next presence or reconnection asks again. */
  private retry(peer: MemberId): void {
    const attempt = this.attempts.get(peer) ?? 0;
    const pause = RETRY_MS[attempt];
    if (pause === undefined) return;
    this.attempts.set(peer, attempt + 1);
    setTimeout(() => {
      if (!this.links.has(peer) && this.attempts.has(peer)) void this.offer(peer);
    }, pause);
  }

  /** Ends the connection with `peer`; `hangUp` also tells the contact (through the worker). */
  private close(peer: MemberId, hangUp: boolean): void {
    const link = this.links.get(peer);
    if (!link) return;
    clearTimeout(link.timer);
    clearTimeout(link.failedTimer);
    this.links.delete(peer);
    this.earlyCandidates.delete(peer);
    // A prepared offer never reached the contact: nothing to hang up, and nothing prepared any more.
    const held = link.held === true;
    if (held) this.preparing.delete(peer);
    link.channel?.close();
    if (link.inWorker) void this.send({ kind: 'dropChannel', member: peer }).catch(() => undefined);
    link.pc.close();
    const wasOpen = link.state !== 'connecting';
    for (const track of link.remote.getTracks()) track.stop();
    if (wasOpen) void this.send({ kind: 'channel', member: peer, open: false }).catch(() => undefined);
    this.onClosed(peer);
    if (hangUp && !held) void this.send({ kind: 'rtcHangup', member: peer }).catch(() => undefined);
    this.changed();
  }
}

/** Resolves once `link` gathered a candidate or finished gathering, or after FIRST_CANDIDATE_MS. */
function firstCandidate(link: Link): Promise<void> {
  const pc = link.pc;
  const ready = () => link.gatheredOne === true || pc.iceGatheringState === 'complete' || pc.signalingState === 'closed';
  if (ready()) return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener('icecandidate', check);
      pc.removeEventListener('icegatheringstatechange', check);
      pc.removeEventListener('signalingstatechange', check);
      resolve();
    };
    const check = () => {
      if (ready()) finish();
    };
    const timer = setTimeout(finish, FIRST_CANDIDATE_MS);
    pc.addEventListener('icecandidate', check);
    pc.addEventListener('icegatheringstatechange', check);
    pc.addEventListener('signalingstatechange', check);
  });
}

/** Whether the selected candidate pair goes through a TURN relay. */
async function path(pc: RTCPeerConnection): Promise<LinkState> {
  const stats = await pc.getStats();
  let pairId: string | undefined;
  stats.forEach((s: { type: string; selectedCandidatePairId?: string }) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  const pair = pairId ? (stats.get(pairId) as { localCandidateId?: string; remoteCandidateId?: string } | undefined) : undefined;
  const type = (id: string | undefined) => (id ? (stats.get(id) as { candidateType?: string } | undefined)?.candidateType : undefined);
  return type(pair?.localCandidateId) === 'relay' || type(pair?.remoteCandidateId) === 'relay' ? 'relayed' : 'direct';
}
