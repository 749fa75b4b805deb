// Audio and video calls with one contact, on the page (media devices and RTCPeerConnection live here). Ringing,
// picking up and ending travel inside MLS through the worker; the media flows on the contact's existing
// connection, set up again with tracks (the offer and answer go inside MLS too, and the DTLS certificate is the one
// already checked when the connection opened). One call at a time: a second ring is answered "busy".
import type { CallNotice, Command, MemberId } from './protocol';
import type { PeerLinks } from './rtc';

export type CallPhase = 'ringing' | 'incoming' | 'connecting' | 'active';
export type EndedWhy = 'hung_up' | 'declined' | 'busy' | 'not_allowed' | 'lost' | 'no_devices' | 'you';

export interface Call {
  peer: MemberId;
  ring: string;
  video: boolean;
  outgoing: boolean;
  phase: CallPhase;
  local: MediaStream | null;
  micOn: boolean;
  camOn: boolean;
  /** Our shared screen, sent beside the camera. */
  screen: MediaStream | null;
}

export interface CallStats {
  inbound: Record<string, { bytes: number; frames: number }>;
  outbound: Record<string, { bytes: number; frames: number }>;
  /** Frames decoded of each incoming video (camera, then a shared screen). */
  videoFrames: number[];
  pair: 'succeeded' | null;
  remoteTracks: Array<{ kind: string; state: string }>;
  localTracks?: Array<{ kind: string; state: string }>;
}

/** Rings that nobody answers stop after this long. */
const RING_TIMEOUT_MS = 60_000;

export class Calls {
  call: Call | null = null;
  /** The last call that ended, and why (shown until the member closes it or a new call starts). */
  ended: { peer: MemberId; why: EndedWhy } | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly send: (command: Command) => Promise<unknown>,
    private readonly links: PeerLinks,
    private readonly changed: () => void,
  ) {
    links.onClosed = (peer) => {
      if (this.call?.peer === peer && this.call.phase !== 'incoming' && this.call.phase !== 'ringing') this.finish('lost');
    };
  }

  /** Rings `peer`; the camera too if `video`. */
  async start(peer: MemberId, video: boolean): Promise<void> {
    if (this.call) throw new Error('already in a call');
    const local = await media(video);
    if (!local) {
      this.ended = { peer, why: 'no_devices' };
      this.changed();
      return;
    }
    this.ended = null;
    this.call = { peer, ring: '', video, outgoing: true, phase: 'ringing', local, micOn: true, camOn: video, screen: null };
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

  handle(notice: CallNotice): void {
    const call = this.call;
    switch (notice.type) {
      case 'callRing':
        if (call) {
          void this.send({ kind: 'endRing', member: notice.peer, ring: notice.ring, busy: true }).catch(() => undefined);
          return;
        }
        this.ended = null;
        this.call = { peer: notice.peer, ring: notice.ring, video: notice.video, outgoing: false, phase: 'incoming', local: null, micOn: true, camOn: notice.video, screen: null };
        this.timer = setTimeout(() => this.finish('hung_up'), RING_TIMEOUT_MS);
        break;
      case 'callAccepted':
        if (!call || !call.outgoing || call.peer !== notice.peer || call.ring !== notice.ring || !call.local) return;
        clearTimeout(this.timer);
        call.phase = 'connecting';
        void this.links.sendMedia(call.peer, call.local).catch(() => this.finish('lost'));
        break;
      case 'callEnded':
        if (!call || call.peer !== notice.peer || call.ring !== notice.ring) return;
        this.finish(notice.reason);
        return;
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
      await this.send({ kind: 'answerRing', member: call.peer, ring: call.ring, accept: false }).catch(() => undefined);
      this.finish('no_devices');
      return;
    }
    call.local = local;
    call.phase = 'connecting';
    this.links.answerMediaWith(call.peer, local);
    this.changed();
    await this.send({ kind: 'answerRing', member: call.peer, ring: call.ring, accept: true });
  }

  async decline(): Promise<void> {
    const call = this.call;
    if (!call || call.phase !== 'incoming') return;
    await this.send({ kind: 'answerRing', member: call.peer, ring: call.ring, accept: false }).catch(() => undefined);
    this.finish('you');
  }

  async hangUp(): Promise<void> {
    const call = this.call;
    if (!call) return;
    if (call.ring) await this.send({ kind: 'endRing', member: call.peer, ring: call.ring, busy: false }).catch(() => undefined);
    this.finish('you');
  }

  async toggleMic(): Promise<void> {
    const call = this.call;
    if (!call) return;
    call.micOn = !call.micOn;
    await this.links.setSending(call.peer, 'audio', call.micOn);
    this.changed();
  }

  async toggleCamera(): Promise<void> {
    const call = this.call;
    if (!call?.video) return;
    call.camOn = !call.camOn;
    await this.links.setSending(call.peer, 'video', call.camOn);
    this.changed();
  }

  /** Shares the screen beside the camera (the browser asks which screen or window), or stops sharing it. */
  async toggleScreen(): Promise<void> {
    const call = this.call;
    if (!call || call.phase !== 'active') return;
    if (call.screen) {
      for (const track of call.screen.getTracks()) track.stop();
      call.screen = null;
      await this.links.setSending(call.peer, 'screen', false);
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
    await this.links.addTrack(call.peer, 'screen', track, screen);
  }

  /** The media is flowing once a remote track arrived. */
  refresh(): void {
    const call = this.call;
    if (call?.phase === 'connecting' && (this.links.remoteStream(call.peer)?.getTracks().length ?? 0) > 0) {
      call.phase = 'active';
    }
  }

  /**
   * Figures of the current call's connection (bytes and frames per direction, the selected candidate pair, the
   * contact's tracks): no key, no address. Shown to nobody yet; `window.peerbubbleDiagnostics` gives them to
   * whoever debugs a call on this page (and to the end-to-end tests).
   */
  async stats(peer?: MemberId): Promise<CallStats | null> {
    const who = peer ?? this.call?.peer;
    const pc = who ? this.links.peerConnection(who) : null;
    if (!who || !pc) return null;
    const out: CallStats = { inbound: {}, outbound: {}, videoFrames: [], pair: null, remoteTracks: [] };
    (await pc.getStats()).forEach((s: Record<string, unknown>) => {
      const kind = String(s.kind ?? '');
      if (s.type === 'inbound-rtp') {
        const seen = out.inbound[kind] ?? { bytes: 0, frames: 0 };
        out.inbound[kind] = { bytes: seen.bytes + Number(s.bytesReceived ?? 0), frames: seen.frames + Number(s.framesDecoded ?? 0) };
        if (kind === 'video') out.videoFrames.push(Number(s.framesDecoded ?? 0));
      }
      if (s.type === 'outbound-rtp') out.outbound[kind] = { bytes: Number(s.bytesSent ?? 0), frames: Number(s.framesEncoded ?? 0) };
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) out.pair = 'succeeded';
    });
    out.remoteTracks = (this.links.remoteStream(who)?.getTracks() ?? []).map((t) => ({ kind: t.kind, state: t.readyState }));
    out.localTracks = (this.call?.local?.getTracks() ?? []).map((t) => ({ kind: t.kind, state: t.readyState }));
    return out;
  }

  dismiss(): void {
    this.ended = null;
    this.changed();
  }

  private finish(why: EndedWhy): void {
    const call = this.call;
    clearTimeout(this.timer);
    if (!call) return;
    for (const track of [...(call.local?.getTracks() ?? []), ...(call.screen?.getTracks() ?? [])]) track.stop();
    this.links.stopMedia(call.peer);
    this.call = null;
    this.ended = { peer: call.peer, why };
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
