/// <reference lib="webworker" />
// The member's client, in a dedicated module worker: client-core (WebAssembly) with the identity key and the
// unlocked key store, the signaling WebSocket and IndexedDB. The page sends commands (checked here) and gets
// one stream of updates: the phase, the view of the screen, and notices. No key ever crosses to the page.

import init, { Enrollment, Member, Vault } from '../wasm/peerbubble_client_wasm.js';
import wasmUrl from '../wasm/peerbubble_client_wasm_bg.wasm?url';
import { WASM_INTEGRITY } from '../wasm/integrity';
import { type Command, type Phase, type Update, parseRequest } from '../protocol';
import {
  backoffSeconds,
  createAccount,
  newDevice,
  openDb,
  readAccountBubble,
  readBackoff,
  readDevice,
  readRecords,
  unwrapDevice,
  writeBackoff,
  writeRecords,
} from './store';

declare const self: DedicatedWorkerGlobalScope;

let db: IDBDatabase | undefined;
let member: Member | undefined;
let socket: WebSocket | undefined;
let timer: ReturnType<typeof setTimeout> | undefined;
let phase: Phase = { phase: 'starting' };
let viewQueued = false;
let busy: Promise<void> = Promise.resolve();

function post(update: Update): void {
  self.postMessage(update);
}

function setPhase(next: Phase): void {
  phase = next;
  post({ kind: 'phase', phase });
}

function signalUrl(): string {
  const scheme = self.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${self.location.host}/v1/signal`;
}

/** After every step: frames out, records to IndexedDB (one transaction), notices and the view to the page. */
async function flush(): Promise<void> {
  const m = member;
  if (!m) return;
  for (let frame = m.pollTransmit(); frame !== undefined; frame = m.pollTransmit()) {
    if (socket?.readyState === WebSocket.OPEN) socket.send(frame);
  }
  const writes: Array<[string, Uint8Array | undefined]> = [];
  for (let rec = m.nextWrite(); rec !== undefined; rec = m.nextWrite()) {
    writes.push([rec.name, rec.value]);
    rec.free();
  }
  for (let out = m.nextChannelSend(); out !== undefined; out = m.nextChannelSend()) {
    const bytes = out.bytes;
    self.postMessage({ kind: 'channelSend', to: out.to, bytes } satisfies Update, [bytes.buffer]);
    out.free();
  }
  for (let text = m.nextNotice(); text !== undefined; text = m.nextNotice()) {
    const notice = JSON.parse(text) as { type: string; [key: string]: unknown };
    if (notice.type === 'connect') openSocket();
    else if (notice.type === 'disconnect') socket?.close(1000);
    post({ kind: 'notice', notice });
  }
  schedule();
  queueView();
  if (db && writes.length > 0) await writeRecords(db, writes);
}

function queueView(): void {
  if (viewQueued) return;
  viewQueued = true;
  queueMicrotask(() => {
    viewQueued = false;
    if (member) post({ kind: 'view', view: JSON.parse(member.view()) });
  });
}

function schedule(): void {
  if (timer !== undefined) clearTimeout(timer);
  timer = undefined;
  const at = member?.pollTimeout();
  if (at === undefined) return;
  timer = setTimeout(() => step((m) => m.handleTimeout(Date.now())), Math.max(0, at - Date.now()));
}

/** Runs one step on the member, then flushes; steps never interleave. */
function step(f: (m: Member) => void): Promise<void> {
  busy = busy
    .then(async () => {
      if (!member) return;
      try {
        f(member);
      } finally {
        await flush();
      }
    })
    // One failed step (a refused frame, a storage error) must never stall the ones after it.
    .catch((err: unknown) => {
      post({ kind: 'notice', notice: { type: 'error', message: String(err instanceof Error ? err.message : err) } });
    });
  return busy;
}

function openSocket(): void {
  socket?.close();
  const ws = new WebSocket(signalUrl());
  socket = ws;
  ws.onopen = () => void step((m) => m.connected(Date.now()));
  ws.onmessage = (e: MessageEvent) => {
    if (typeof e.data === 'string') void step((m) => m.handleText(e.data as string, Date.now()));
  };
  ws.onclose = (e: CloseEvent) => {
    if (socket !== ws) return;
    socket = undefined;
    void step((m) => m.disconnected(e.code || undefined, Date.now()));
  };
}

function closeMember(): void {
  const s = socket;
  socket = undefined;
  s?.close(1000);
  if (timer !== undefined) clearTimeout(timer);
  timer = undefined;
  member?.free();
  member = undefined;
}

async function start(): Promise<void> {
  const response = fetch(wasmUrl, { integrity: WASM_INTEGRITY });
  await init({ module_or_path: response });
  db = await openDb();
  const held = await new Promise<boolean>((resolve) => {
    void navigator.locks.request('peerbubble-member', { ifAvailable: true }, (lock) => {
      resolve(lock !== null);
      // Held for the worker's life: one tab at a time opens the key store.
      return lock === null ? undefined : new Promise<void>(() => undefined);
    });
  });
  if (!held) return setPhase({ phase: 'otherTab' });
  await lockedPhase();
}

async function lockedPhase(): Promise<void> {
  if (!db) return;
  const device = await readDevice(db);
  if (!device) return setPhase({ phase: 'enroll' });
  const backoff = await readBackoff(db);
  setPhase({ phase: 'locked', bubble: await readAccountBubble(db), retryAt: backoff.retryAt });
}

async function enroll(link: string, passphrase: string): Promise<unknown> {
  if (!db) throw new Error('storage is not open');
  if (phase.phase !== 'enroll') throw new Error('this device is already enrolled');
  const enrollment = new Enrollment(link);
  const response = await fetch('/api/v1/enroll', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: enrollment.request(),
  });
  const text = await response.text();
  if (!response.ok) {
    enrollment.free();
    let message = text;
    try {
      const body = JSON.parse(text) as { error?: string; message?: string };
      message = body.message ?? body.error ?? text;
    } catch {
      // plain text answer
    }
    throw new Error(`enroll_refused: ${message}`);
  }
  const { entry, secret } = await newDevice();
  const m = enrollment.finish(text, secret, passphrase);
  secret.fill(0);
  const writes: Array<[string, Uint8Array | undefined]> = [];
  for (let rec = m.nextWrite(); rec !== undefined; rec = m.nextWrite()) {
    writes.push([rec.name, rec.value]);
    rec.free();
  }
  await createAccount(db, entry, writes, m.bubble);
  member = m;
  setPhase({ phase: 'open' });
  await step(() => undefined);
  return { member: m.id, bubble: m.bubble };
}

async function unlock(passphrase: string): Promise<unknown> {
  if (!db) throw new Error('storage is not open');
  if (phase.phase !== 'locked') throw new Error('nothing to unlock');
  const backoff = await readBackoff(db);
  if (backoff.retryAt > Date.now()) throw new Error(`wait: ${Math.ceil((backoff.retryAt - Date.now()) / 1000)}`);
  const device = await readDevice(db);
  if (!device) throw new Error('no key store on this device');
  const vault = new Vault();
  for (const [name, value] of await readRecords(db)) vault.add(name, value);
  const secret = await unwrapDevice(device);
  try {
    member = vault.unlock(secret, passphrase);
  } catch (err) {
    const failures = backoff.failures + 1;
    const retryAt = Date.now() + backoffSeconds(failures) * 1000;
    await writeBackoff(db, { failures, retryAt });
    setPhase({ phase: 'locked', bubble: await readAccountBubble(db), retryAt });
    throw err;
  } finally {
    secret.fill(0);
  }
  await writeBackoff(db, { failures: 0, retryAt: 0 });
  setPhase({ phase: 'open' });
  await step(() => undefined);
  return { member: member.id };
}

async function run(command: Command): Promise<unknown> {
  switch (command.kind) {
    case 'hello':
      post({ kind: 'phase', phase });
      if (member) queueView();
      return null;
    case 'enroll':
      return enroll(command.link, command.passphrase);
    case 'unlock':
      return unlock(command.passphrase);
    case 'lock':
      closeMember();
      await lockedPhase();
      return null;
    default:
      throw new Error('locked');
  }
}

// A command's errors are answered to it; step() reports errors of network events as notices instead.
async function answer(id: number, command: Command): Promise<void> {
  try {
    if (member && command.kind !== 'hello' && command.kind !== 'lock') {
      // Commands on the member run inside a step so that they are ordered with network events.
      let failure: unknown;
      let value: unknown = null;
      await (busy = busy.then(async () => {
        try {
          value = await runDirect(command);
        } catch (err) {
          failure = err;
        }
      }));
      if (failure !== undefined) throw failure;
      post({ kind: 'reply', id, ok: true, value });
    } else {
      post({ kind: 'reply', id, ok: true, value: await run(command) });
    }
  } catch (err) {
    post({ kind: 'reply', id, ok: false, error: String(err instanceof Error ? err.message : err) });
  }
}

/** A member command, inside the step queue: run it, then flush. */
async function runDirect(command: Command): Promise<unknown> {
  const m = member;
  if (!m) throw new Error('locked');
  const now = Date.now();
  let value: unknown = null;
  switch (command.kind) {
    case 'startDirect':
      m.startDirect(command.member, now);
      break;
    case 'createGroup':
      value = m.createGroup(command.name, JSON.stringify(command.members), now);
      break;
    case 'addMember':
      m.addMember(command.conversation, command.member, now);
      break;
    case 'removeMember':
      m.removeMember(command.conversation, command.member, now);
      break;
    case 'leave':
      m.leave(command.conversation, now);
      break;
    case 'removeContact':
      m.removeContact(command.member, now);
      break;
    case 'sendText':
      value = m.sendText(command.conversation, command.text, now);
      break;
    case 'edit':
      m.edit(command.conversation, command.message, command.text, now);
      break;
    case 'delete':
      m.delete(command.conversation, command.message, now);
      break;
    case 'markRead':
      m.markRead(command.conversation, JSON.stringify(command.messages), now);
      break;
    case 'typing':
      m.typing(command.conversation, command.typing, now);
      break;
    case 'setTimer':
      m.setTimer(command.conversation, command.seconds, now);
      break;
    case 'safetyNumber':
      value = m.safetyNumber(command.member);
      break;
    case 'setVerified':
      m.setVerified(command.member, command.verified);
      break;
    case 'iceServers':
      value = JSON.parse(m.iceServers());
      break;
    case 'rtcOffer':
      m.startCall(command.member, command.sdp, now);
      break;
    case 'rtcAnswer':
      m.answerCall(command.member, command.sdp, now);
      break;
    case 'rtcVerify':
      value = m.verifyDtls(command.member, command.certificate, now);
      break;
    case 'rtcHangup':
      m.hangup(command.member, now);
      break;
    case 'channel':
      m.channel(command.member, command.open, now);
      break;
    case 'channelData':
      m.handleChannel(command.member, command.bytes, now);
      break;
    default:
      throw new Error('not available while the key store is open');
  }
  await flush();
  return value;
}

self.onmessage = (e: MessageEvent) => {
  const request = parseRequest(e.data);
  if (!request) {
    post({ kind: 'notice', notice: { type: 'error', message: 'malformed command refused by the worker' } });
    return;
  }
  void answer(request.id, request.command);
};

start().catch((err: unknown) => {
  setPhase({ phase: 'unsupported', reason: String(err instanceof Error ? err.message : err) });
});
