// The page's side of the worker boundary: sends commands, checks every update the worker posts.
import { Calls } from './calls';
import { type Command, type Phase, type Update, type View, parseCallNotice, parseRtcNotice, parseUpdate } from './protocol';
import { PeerLinks } from './rtc';

type Listener = () => void;

export class WorkerClient {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly listeners = new Set<Listener>();
  phase: Phase = { phase: 'starting' };
  view: View | null = null;
  notices: Array<{ type: string; [key: string]: unknown }> = [];
  /** The page's WebRTC connections with contacts (DataChannels carrying MLS ciphertext). */
  readonly links: PeerLinks = new PeerLinks(
    (command) => this.send(command),
    () => {
      this.calls.refresh();
      this.emit();
    },
  );
  /** The audio or video call with a contact, if any (media on the page, ringing inside MLS). */
  readonly calls: Calls = new Calls(
    (command) => this.send(command),
    this.links,
    () => this.emit(),
    () => this.view,
  );

  constructor() {
    this.worker = new Worker(new URL('./worker/worker.ts', import.meta.url), { type: 'module', name: 'peerbubble' });
    this.links.handOver = (member, channel) => {
      // Synchronous, in the task that made the channel (a transfer requires it); unanswered.
      try {
        this.worker.postMessage({ id: this.nextId++, command: { kind: 'adoptChannel', member, channel } satisfies Command }, [channel]);
        return true;
      } catch {
        return false;
      }
    };
    this.worker.onmessage = (e: MessageEvent) => this.receive(e.data);
    this.worker.onerror = () => {
      this.phase = { phase: 'unsupported', reason: 'worker' };
      this.emit();
    };
    void this.send({ kind: 'hello' }).catch(() => undefined);
    Object.defineProperty(window, 'peerbubbleDiagnostics', {
      value: {
        callStats: (peer?: string) => this.calls.stats(peer),
        callOthers: () => [...(this.calls.call?.others ?? [])],
        channelsInWorker: () => this.links.channelsInWorker(),
        trickled: () => ({ ...this.links.trickled }),
      },
    });
  }

  private receive(data: unknown): void {
    const update: Update | null = parseUpdate(data);
    if (!update) return; // refused: not something the worker would send
    switch (update.kind) {
      case 'reply': {
        const waiting = this.pending.get(update.id);
        this.pending.delete(update.id);
        if (!waiting) return;
        if (update.ok) waiting.resolve(update.value);
        else waiting.reject(new Error(update.error));
        return;
      }
      case 'phase':
        this.phase = update.phase;
        if (update.phase.phase !== 'open') {
          this.view = null;
          void this.calls.hangUp();
          this.links.closeAll();
        }
        break;
      case 'channelSend':
        this.links.deliver(update.to, update.bytes);
        return;
      case 'channelEvent':
        this.links.channelEvent(update.member, update.event);
        return;
      case 'view':
        this.view = update.view;
        // The bubble's relay-only rule applies to connections at once (welcome, or a change pushed live).
        this.links.setRelayRequired(update.view.policy.relay_only);
        break;
      case 'notice': {
        const rtc = parseRtcNotice(update.notice);
        // Call set-up carries SDP (addresses): it goes to the connections, never into the notices the UI keeps.
        if (rtc) return this.links.handle(rtc);
        const call = parseCallNotice(update.notice);
        if (call) return this.calls.handle(call);
        this.notices = [...this.notices.slice(-20), { ...update.notice, receivedAt: Date.now() }];
        break;
      }
    }
    this.emit();
  }

  send(command: Command): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // DataChannel bytes and a security key's secret are handed over, not copied: the page keeps no copy.
      const transfer =
        command.kind === 'channelData'
          ? [command.bytes.buffer as ArrayBuffer]
          : command.kind === 'enroll' && command.securityKey
            ? [command.securityKey.secret.buffer as ArrayBuffer]
            : command.kind === 'unlock' && command.securitySecret
              ? [command.securitySecret.buffer as ArrayBuffer]
              : command.kind === 'changeProtection'
                ? [
                    ...(command.securitySecret ? [command.securitySecret.buffer as ArrayBuffer] : []),
                    ...(typeof command.securityKey === 'object' ? [command.securityKey.secret.buffer as ArrayBuffer] : []),
                  ]
                : [];
      this.worker.postMessage({ id, command }, transfer);
    });
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(): void {
    for (const l of this.listeners) l();
  }
}
