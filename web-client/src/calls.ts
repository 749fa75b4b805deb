// Audio and video calls, on the page (media devices and RTCPeerConnection live here). Ringing, picking up and
// ending travel inside MLS through the worker; the media flows on each contact's existing connection, set up
// again with tracks (the offer and answer go inside MLS too, and the DTLS certificate is the one already checked
// when the connection opened). One call at a time: a second ring is answered "busy".
//
// A group call is a mesh: each pair of participants sends its media on the pair's own connection. Who is in the
// call comes from the worker (client-core counts the group's joins and leaves, and enforces the mesh's limit);
// of each pair, the lower member id sets the media up, as for connections, so the two never offer at once.
import type { CallNotice, Command, ConversationId, MemberId, View } from './protocol';
import type { PeerLinks } from './rtc';

export type CallPhase = 'ringing' | 'incoming' | 'connecting' | 'active';
export type EndedWhy = 'hung_up' | 'declined' | 'busy' | 'not_allowed' | 'lost' | 'no_devices' | 'you' | 'full' | 'everyone_left';

export interface Call {
  /** 1:1: the contact. Group: who rang. */
  peer: MemberId;
  /** The group conversation of a group call; null for a call with one contact. */
  group: ConversationId | null;
  ring: string;
  video: boolean;
  outgoing: boolean;
  phase: CallPhase;
  local: MediaStream | null;
  micOn: boolean;
  camOn: boolean;
  /** Our shared screen, sent beside the camera. */
  screen: MediaStream | null;
  /** Everyone else in the call (a 1:1 call: the contact). */
  others: MemberId[];
}

export interface CallStats {
  inbound: Record<string, { bytes: number; frames: number }>;
  outbound: Record<string, { bytes: number; frames: number }>;
  /** Frames decoded of each incoming video (camera, then a shared screen). */
  videoFrames: number[];
  pair: 'succeeded' | null;
  /** Whether the selected candidate pair goes through the bubble's TURN relay. */
  relayed: boolean;
  remoteTracks: Array<{ kind: string; state: string }>;
  localTracks?: Array<{ kind: string; state: string; label: string }>;
}

/** A group call is a mesh (each sends to each): client-core refuses joins beyond these. */
export const GROUP_VIDEO_LIMIT = 4;
export const GROUP_AUDIO_LIMIT = 8;

/** How many may be in a group call. */
export function groupLimit(video: boolean): number {
  return video ? GROUP_VIDEO_LIMIT : GROUP_AUDIO_LIMIT;
}

/** A call as it starts: microphone on, camera on if it has video, no screen shared. */
function newCall(c: Pick<Call, 'peer' | 'group' | 'ring' | 'video' | 'outgoing' | 'phase' | 'local' | 'others'>): Call {
  return { ...c, micOn: true, camOn: c.video, screen: null };
}

/** Rings that nobody answers stop after this long. */
const RING_TIMEOUT_MS = 60_000;
/** How long a group participant waits for the connection with another before giving that pair up. */
const LINK_WAIT_MS = 30_000;

export class Calls {
  call: Call | null = null;
  /** The last call that ended, and why (shown until the member closes it or a new call starts). */
  ended: { peer: MemberId; group: ConversationId | null; why: EndedWhy } | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Group call: the participants our media is being set up with, or flows to. */
  private readonly media = new Set<MemberId>();

  constructor(
    private readonly send: (command: Command) => Promise<unknown>,
    private readonly links: PeerLinks,
    private readonly changed: () => void,
    private readonly view: () => View | null,
  ) {
    links.onClosed = (peer) => this.closed(peer);
    links.onMediaAnswered = (peer) => void this.applyState(peer);
    // An offer from someone in our call gets our tracks in the answer (the callee's side of each pair).
    links.mediaFor = (peer) => {
      const call = this.call;
      if (!call?.local || call.phase === 'incoming' || call.phase === 'ringing' || !call.others.includes(peer)) return null;
      return call.local;
    };
  }

  private get me(): MemberId | undefined {
    return this.view()?.me.member;
  }

  /** Rings `peer`; the camera too if `video`. */
  async start(peer: MemberId, video: boolean): Promise<void> {
    if (this.call) throw new Error('already in a call');
    const local = await media(video);
    if (!local) {
      this.ended = { peer, group: null, why: 'no_devices' };
      this.changed();
      return;
    }
    this.ended = null;
    this.call = newCall({ peer, group: null, ring: '', video, outgoing: true, phase: 'ringing', local, others: [peer] });
    this.changed();
    try {
      const ring = await this.send({ kind: 'ring', member: peer, video });
      if (typeof ring !== 'string') throw new Error('no call id');
      if (this.call?.peer === peer) this.call.ring = ring;
      this.timer = setTimeout(() => void this.hangUp(), RING_TIMEOUT_MS);
    } catch (err) {
      this.finish('you');
      throw err;
    }
    this.changed();
  }

  /** Rings everyone in a group; each who picks up joins the call (a mesh, 4 with video, 8 audio-only). */
  async startGroup(group: ConversationId, video: boolean): Promise<void> {
    const me = this.me;
    if (this.call || !me) throw new Error('already in a call');
    const local = await media(video);
    if (!local) {
      this.ended = { peer: me, group, why: 'no_devices' };
      this.changed();
      return;
    }
    this.ended = null;
    this.media.clear();
    this.call = newCall({ peer: me, group, ring: '', video, outgoing: true, phase: 'ringing', local, others: [] });
    this.changed();
    try {
      const ring = await this.send({ kind: 'ringGroup', group, video });
      if (typeof ring !== 'string') throw new Error('no call id');
      if (this.call?.group === group) this.call.ring = ring;
      // Nobody picked up in time: the call stops ringing.
      this.timer = setTimeout(() => {
        if (this.call?.group === group && this.call.others.length === 0) void this.hangUp();
      }, RING_TIMEOUT_MS);
    } catch (err) {
      this.finish('you');
      throw err;
    }
    this.changed();
  }

  /** Joins the call under way in a group (from the group's "join" button, no ring needed). */
  async joinGroup(group: ConversationId): Promise<void> {
    const me = this.me;
    const call = this.view()?.conversations.find((c) => c.id === group)?.call;
    if (this.call || !me || !call) return;
    this.ended = null;
    this.media.clear();
    const others = call.participants.filter((p) => p !== me);
    this.call = newCall({ peer: call.caller, group, ring: call.ring, video: call.video, outgoing: false, phase: 'incoming', local: null, others });
    await this.accept();
  }

  handle(notice: CallNotice): void {
    const call = this.call;
    switch (notice.type) {
      case 'callRing':
        if (call) {
          void this.send({ kind: 'endRing', member: notice.peer, ring: notice.ring, busy: true }).catch(() => undefined);
          return;
        }
        this.ended = null;
        this.call = newCall({ peer: notice.peer, group: null, ring: notice.ring, video: notice.video, outgoing: false, phase: 'incoming', local: null, others: [notice.peer] });
        this.timer = setTimeout(() => this.finish('hung_up'), RING_TIMEOUT_MS);
        break;
      case 'callAccepted':
        if (!call || call.group || !call.outgoing || call.peer !== notice.peer || call.ring !== notice.ring || !call.local) return;
        clearTimeout(this.timer);
        call.phase = 'connecting';
        void this.links.sendMedia(call.peer, call.local).catch(() => this.finish('lost'));
        break;
      case 'callEnded':
        if (!call || call.group || call.peer !== notice.peer || call.ring !== notice.ring) return;
        this.finish(notice.reason);
        return;
      case 'groupCallRing':
        // We rang the same group at the same moment: both sides keep the lower id, so we join that call.
        if (call?.group === notice.group && call.outgoing && call.phase === 'ringing' && call.ring && notice.ring < call.ring) {
          void this.adopt(call, notice.ring, notice.participants);
          return;
        }
        // Busy in another call: nobody in the group needs to hear it (they see who joins).
        if (call) return;
        this.ended = null;
        this.media.clear();
        this.call = newCall({
          peer: notice.peer,
          group: notice.group,
          ring: notice.ring,
          video: notice.video,
          outgoing: false,
          phase: 'incoming',
          local: null,
          others: notice.participants.filter((p) => p !== this.me),
        });
        this.timer = setTimeout(() => {
          if (this.call?.phase === 'incoming' && this.call.ring === notice.ring) this.finish('hung_up', true);
        }, RING_TIMEOUT_MS);
        break;
      case 'groupCallJoined': {
        if (!call || call.group !== notice.group || call.ring !== notice.ring) return;
        call.others = notice.participants.filter((p) => p !== this.me);
        if (call.phase === 'incoming') break;
        clearTimeout(this.timer);
        if (call.phase === 'ringing') call.phase = 'connecting';
        const me = this.me;
        if (me && me < notice.peer) void this.connectMedia(notice.peer);
        break;
      }
      case 'groupCallLeft': {
        if (!call || call.group !== notice.group || call.ring !== notice.ring) return;
        // About us: the caller did not count our join (someone took the last seat at the same moment).
        if (notice.peer === this.me && call.phase !== 'incoming') {
          this.finish('full');
          return;
        }
        call.others = notice.participants.filter((p) => p !== this.me);
        this.media.delete(notice.peer);
        this.links.stopMedia(notice.peer);
        if (call.phase === 'incoming') {
          // Everyone left before we picked up: the ring stops.
          if (call.others.length === 0) this.finish('hung_up', true);
          break;
        }
        if (call.others.length === 0 && call.phase !== 'ringing') {
          this.finish('everyone_left');
          return;
        }
        break;
      }
    }
    this.changed();
  }

  /** The callee picks up: its devices, then the caller sets the connection up again with both sides' tracks. */
  async accept(): Promise<void> {
    const call = this.call;
    if (!call || call.phase !== 'incoming') return;
    clearTimeout(this.timer);
    const local = await media(call.video);
    if (!local) {
      if (!call.group) await this.send({ kind: 'answerRing', member: call.peer, ring: call.ring, accept: false }).catch(() => undefined);
      this.finish('no_devices');
      return;
    }
    call.local = local;
    call.phase = 'connecting';
    this.changed();
    if (!call.group) {
      await this.send({ kind: 'answerRing', member: call.peer, ring: call.ring, accept: true });
      return;
    }
    try {
      await this.send({ kind: 'joinGroupCall', group: call.group, ring: call.ring });
    } catch (err) {
      // Full (or over): said why, nothing was sent.
      this.finish(String(err instanceof Error ? err.message : err).includes('full') ? 'full' : 'lost');
      return;
    }
    this.connectOurPairs(call);
  }

  async decline(): Promise<void> {
    const call = this.call;
    if (!call || call.phase !== 'incoming') return;
    if (!call.group) await this.send({ kind: 'answerRing', member: call.peer, ring: call.ring, accept: false }).catch(() => undefined);
    // Declining a group's call tells nobody, and needs no banner: the group shows a "join" button meanwhile.
    this.finish('you', call.group !== null);
  }

  /** Our ring lost to one made at the same moment in the same group: we join that call instead. */
  private async adopt(call: Call, ring: string, participants: MemberId[]): Promise<void> {
    if (!call.group) return;
    call.ring = ring;
    call.others = participants.filter((p) => p !== this.me);
    call.phase = 'connecting';
    this.changed();
    try {
      await this.send({ kind: 'joinGroupCall', group: call.group, ring });
    } catch {
      this.finish('lost');
      return;
    }
    this.connectOurPairs(call);
  }

  async hangUp(): Promise<void> {
    const call = this.call;
    if (!call) return;
    if (call.group) {
      if (call.ring && call.phase !== 'incoming') await this.send({ kind: 'leaveGroupCall', group: call.group, ring: call.ring }).catch(() => undefined);
    } else if (call.ring) {
      await this.send({ kind: 'endRing', member: call.peer, ring: call.ring, busy: false }).catch(() => undefined);
    }
    this.finish('you');
  }

  async toggleMic(): Promise<void> {
    const call = this.call;
    if (!call) return;
    call.micOn = !call.micOn;
    await this.eachPeer((peer) => this.links.setSending(peer, 'audio', call.micOn));
    this.changed();
  }

  async toggleCamera(): Promise<void> {
    const call = this.call;
    if (!call?.video) return;
    call.camOn = !call.camOn;
    await this.eachPeer((peer) => this.links.setSending(peer, 'video', call.camOn));
    this.changed();
  }

  /** The microphones and cameras this browser offers (labels only once the member allowed a call's devices). */
  async devices(): Promise<MediaDeviceInfo[]> {
    try {
      return (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audioinput' || d.kind === 'videoinput');
    } catch {
      return [];
    }
  }

  /** The device a call's track of this kind comes from. */
  deviceOf(kind: 'audio' | 'video'): string | undefined {
    return this.call?.local?.getTracks().find((t) => t.kind === kind)?.getSettings().deviceId;
  }

  /** Switches the microphone or the camera during the call: the new device's track replaces the old on every
   * connection, without setting anything up again (muted stays muted). */
  async switchDevice(kind: 'audio' | 'video', deviceId: string): Promise<void> {
    const call = this.call;
    if (!call?.local) return;
    const stream = await navigator.mediaDevices.getUserMedia(kind === 'audio' ? { audio: { deviceId: { exact: deviceId } } } : { video: { deviceId: { exact: deviceId } } });
    const track = stream.getTracks()[0];
    if (!track) return;
    if (this.call !== call || !call.local) {
      track.stop();
      return;
    }
    for (const old of call.local.getTracks().filter((t) => t.kind === kind)) {
      call.local.removeTrack(old);
      old.stop();
    }
    call.local.addTrack(track);
    const on = kind === 'audio' ? call.micOn : call.camOn;
    await this.eachPeer((peer) => this.links.replaceTrack(peer, kind, track, on));
    this.changed();
  }

  /** Shares the screen beside the camera (the browser asks which screen or window), or stops sharing it. */
  async toggleScreen(): Promise<void> {
    const call = this.call;
    if (!call || call.phase !== 'active') return;
    if (call.screen) {
      for (const track of call.screen.getTracks()) track.stop();
      call.screen = null;
      await this.eachPeer((peer) => this.links.setSending(peer, 'screen', false));
      this.changed();
      return;
    }
    const screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const track = screen.getVideoTracks()[0];
    if (!track) return;
    // Stopped from the browser's own "stop sharing" bar: the same as the button.
    track.onended = () => {
      if (this.call?.screen === screen) void this.toggleScreen();
    };
    call.screen = screen;
    this.changed();
    await this.eachPeer((peer) => this.links.addTrack(peer, 'screen', track, screen));
  }

  /** The media is flowing once a remote track arrived. */
  refresh(): void {
    const call = this.call;
    if (call?.phase === 'connecting' && call.others.some((p) => (this.links.remoteStream(p)?.getTracks().length ?? 0) > 0)) {
      call.phase = 'active';
    }
  }

  /**
   * Figures of the current call's connection with `peer` (the contact of a 1:1 call by default): bytes and
   * frames per direction, the selected candidate pair, the contact's tracks; no key, no address. Shown to nobody
   * yet; `window.peerbubbleDiagnostics` gives them to whoever debugs a call on this page (and to the tests).
   */
  async stats(peer?: MemberId): Promise<CallStats | null> {
    const who = peer ?? this.call?.others[0];
    const pc = who ? this.links.peerConnection(who) : null;
    if (!who || !pc) return null;
    const out: CallStats = { inbound: {}, outbound: {}, videoFrames: [], pair: null, relayed: false, remoteTracks: [] };
    const report = await pc.getStats();
    const types = new Map<string, string>();
    let selected: Record<string, unknown> | undefined;
    report.forEach((s: Record<string, unknown>) => {
      if (s.type === 'local-candidate' || s.type === 'remote-candidate') types.set(String(s.id), String(s.candidateType));
      if (s.type === 'transport' && typeof s.selectedCandidatePairId === 'string') selected = report.get(s.selectedCandidatePairId) as Record<string, unknown>;
    });
    out.relayed = selected !== undefined && (types.get(String(selected.localCandidateId)) === 'relay' || types.get(String(selected.remoteCandidateId)) === 'relay');
    report.forEach((s: Record<string, unknown>) => {
      const kind = String(s.kind ?? '');
      if (s.type === 'inbound-rtp') {
        const seen = out.inbound[kind] ?? { bytes: 0, frames: 0 };
        out.inbound[kind] = { bytes: seen.bytes + Number(s.bytesReceived ?? 0), frames: seen.frames + Number(s.framesDecoded ?? 0) };
        if (kind === 'video') out.videoFrames.push(Number(s.framesDecoded ?? 0));
      }
      if (s.type === 'outbound-rtp') {
        const seen = out.outbound[kind] ?? { bytes: 0, frames: 0 };
        out.outbound[kind] = { bytes: seen.bytes + Number(s.bytesSent ?? 0), frames: seen.frames + Number(s.framesEncoded ?? 0) };
      }
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) out.pair = 'succeeded';
    });
    out.remoteTracks = (this.links.remoteStream(who)?.getTracks() ?? []).map((t) => ({ kind: t.kind, state: t.readyState }));
    out.localTracks = (this.call?.local?.getTracks() ?? []).map((t) => ({ kind: t.kind, state: t.readyState, label: t.label }));
    return out;
  }

  dismiss(): void {
    this.ended = null;
    this.changed();
  }

  /** Who our media goes to: the contact, or the group's participants it is set up with (either side). */
  private mediaPeers(): MemberId[] {
    const call = this.call;
    if (!call) return [];
    return call.group ? call.others.filter((p) => this.links.sendsMedia(p)) : [call.peer];
  }

  /** Runs `f` for every connection our media goes to; one failing does not stop the others. */
  private async eachPeer(f: (peer: MemberId) => Promise<void>): Promise<void> {
    await Promise.all(this.mediaPeers().map((peer) => f(peer).catch(() => undefined)));
  }

  /** Our tracks were just added to the connection with `peer`: muted stays muted, a shared screen is sent. */
  private async applyState(peer: MemberId): Promise<void> {
    const call = this.call;
    if (!call) return;
    if (!call.micOn) await this.links.setSending(peer, 'audio', false);
    if (call.video && !call.camOn) await this.links.setSending(peer, 'video', false);
    const screen = call.screen?.getVideoTracks()[0];
    if (call.screen && screen && !this.links.sendsMedia(peer, 'screen')) await this.links.addTrack(peer, 'screen', screen, call.screen);
  }

  /** Group call, just joined: sets our media up with everyone already in whose pair we lead (lower id). */
  private connectOurPairs(call: Call): void {
    const me = this.me;
    for (const other of call.others) if (me && me < other) void this.connectMedia(other);
  }

  /**
   * Group call: sends our media to `peer` on the pair's connection (we are the lower id of the pair). A pair
   * that never talked sets up its 1:1 conversation first; the connection then opens as any other does.
   */
  private async connectMedia(peer: MemberId): Promise<void> {
    const call = this.call;
    if (!call?.local || !call.group || this.media.has(peer)) return;
    this.media.add(peer);
    try {
      const view = this.view();
      const direct = view?.conversations.some((c) => c.kind === 'direct' && c.members.includes(peer));
      if (!direct) await this.send({ kind: 'startDirect', member: peer }).catch(() => undefined);
      const deadline = Date.now() + LINK_WAIT_MS;
      while (!this.links.isOpen(peer) && Date.now() < deadline && this.call === call && call.others.includes(peer)) {
        await new Promise((r) => setTimeout(r, 200));
      }
      if (this.call !== call || !call.others.includes(peer) || !call.local || !this.links.isOpen(peer)) throw new Error('no connection');
      await this.links.sendMedia(peer, call.local);
      await this.applyState(peer);
    } catch {
      this.media.delete(peer);
    }
    this.changed();
  }

  /** The connection with `peer` ended: a 1:1 call is over; in a group, that pair's media is set up again. */
  private closed(peer: MemberId): void {
    const call = this.call;
    if (!call || call.phase === 'incoming' || call.phase === 'ringing') return;
    if (!call.group) {
      if (call.peer === peer) this.finish('lost');
      return;
    }
    if (!this.media.delete(peer) && !call.others.includes(peer)) return;
    const me = this.me;
    if (me && me < peer && call.others.includes(peer)) void this.connectMedia(peer);
    this.changed();
  }

  private finish(why: EndedWhy, quiet = false): void {
    const call = this.call;
    clearTimeout(this.timer);
    if (!call) return;
    for (const track of [...(call.local?.getTracks() ?? []), ...(call.screen?.getTracks() ?? [])]) track.stop();
    for (const peer of call.group ? [...this.media, ...call.others] : [call.peer]) this.links.stopMedia(peer);
    this.media.clear();
    this.call = null;
    // A group ring that stopped before we picked up is not worth a banner ("missed" shows in the group).
    this.ended = quiet ? null : { peer: call.peer, group: call.group, why };
    this.changed();
  }
}

/** The microphone (and camera), or null when the member refused or has none. */
async function media(video: boolean): Promise<MediaStream | null> {
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video });
  } catch {
    return null;
  }
}
