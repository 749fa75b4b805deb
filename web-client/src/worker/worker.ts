/// <reference lib="webworker" />
// The member's client, in a dedicated module worker: client-core (WebAssembly) with the identity key and the
// unlocked key store, the signaling WebSocket and IndexedDB. The page sends commands (checked here) and gets
// one stream of updates: the phase, the view of the screen, and notices. No key ever crosses to the page.

import init, { type ChannelSend, Enrollment, FileHash, Member, Vault, warmUp } from '../wasm/peerbubble_client_wasm.js';
import wasmUrl from '../wasm/peerbubble_client_wasm_bg.wasm?url';
import { WASM_INTEGRITY } from '../wasm/integrity';
import { type Command, type NewSecurityKey, type Phase, type Update, type View, parseRequest } from '../protocol';
import {
  createAccount,
  newDevice,
  openDb,
  readAccountBubble,
  readBackoff,
  readDevice,
  readRecords,
  readSecurityKey,
  unwrapDevice,
  countFailure,
  writeBackoff,
  writeProtection,
  writeRecords,
} from './store';
import { FileSource, type Layout, SealedFiles } from './files';

declare const self: DedicatedWorkerGlobalScope;

let db: IDBDatabase | undefined;
let member: Member | undefined;
let socket: WebSocket | undefined;
let timer: ReturnType<typeof setTimeout> | undefined;
let phase: Phase = { phase: 'starting' };
let viewQueued = false;
let lastView = 0;
let busy: Promise<void> = Promise.resolve();
/** The module's memory: what goes on a DataChannel is sent from a view of it. */
let wasmMemory: WebAssembly.Memory | undefined;
/** Received files, kept sealed in OPFS. */
const sealed = new SealedFiles();
/** Files the member is sending, by transfer (lost with the page: the member picks the file again to go on). */
const sources = new Map<string, FileSource>();
/** How each transfer's file is cut (asked of the core once). */
const layouts = new Map<string, Layout>();
/**
 * DataChannels the page handed over (transferred), by contact: their bytes go between the channel and the core
 * here, never through the page. Until the page says the DTLS certificate is the contact's (`channel` open), what
 * arrives is held and nothing is sent.
 */
const channels = new Map<string, { dc: RTCDataChannel; verified: boolean; early: Uint8Array[] }>();
/** How long a reloaded page waits for the lock of the page it replaced. */
const LOCK_WAIT_MS = 5_000;
/** A view at most this often while bytes are moving (each is the whole screen's state). */
const VIEW_EVERY_MS = 150;

function layout(m: Member, transfer: string): Layout {
  let l = layouts.get(transfer);
  if (!l) {
    l = JSON.parse(m.fileLayout(transfer)) as Layout;
    layouts.set(transfer, l);
  }
  return l;
}

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

/**
 * After every step: records to IndexedDB (one transaction), then frames out, notices and the view to the page. The
 * records come first: an MLS message sent advanced secrets the records keep, and a tab closed between the two would
 * come back with the old secrets and use them again (the contact refuses that). What the bubble's mailbox
 * delivered is acknowledged in the same frames, the state it changed being saved.
 */
async function flush(): Promise<void> {
  const m = member;
  if (!m) return;
  // Chunks of incoming files are written before the acknowledgements that go with them leave.
  let wrote = false;
  for (const { transfer, index, bytes } of arrived.splice(0)) {
    await sealed.handle(transfer);
    sealed.write(transfer, layout(m, transfer), index, bytes);
    wrote = true;
  }
  for (let chunk = m.nextSealedChunk(); chunk !== undefined; chunk = m.nextSealedChunk()) {
    const { transfer, index } = chunk;
    const bytes = chunk.sealed;
    chunk.free();
    await sealed.handle(transfer);
    sealed.write(transfer, layout(m, transfer), index, bytes);
    wrote = true;
  }
  if (member !== m) return;
  const writes: Array<[string, Uint8Array | undefined]> = [];
  for (let rec = m.nextWrite(); rec !== undefined; rec = m.nextWrite()) {
    writes.push([rec.name, rec.value]);
    rec.free();
  }
  if (db && writes.length > 0) await writeRecords(db, writes);
  if (member !== m) return;
  m.saved(Date.now());
  const frames: string[] = [];
  for (let frame = m.pollTransmit(); frame !== undefined; frame = m.pollTransmit()) frames.push(frame);
  const outs: ChannelSend[] = [];
  for (let out = m.nextChannelSend(); out !== undefined; out = m.nextChannelSend()) outs.push(out);
  const notices: Array<{ type: string; [key: string]: unknown }> = [];
  for (let text = m.nextNotice(); text !== undefined; text = m.nextNotice()) notices.push(JSON.parse(text));
  // Written once per step that sends something (an acknowledgement goes with every 16th chunk); synced to disk
  // now and then, and before a file's completion leaves (see SealedFiles).
  if (wrote && (frames.length > 0 || outs.length > 0)) sealed.flush(notices.some((n) => n.type === 'fileReceived'));
  for (const frame of frames) {
    if (socket?.readyState === WebSocket.OPEN) socket.send(frame);
  }
  for (const out of outs) {
    const to = out.to;
    const held = channels.get(to);
    if (held) {
      if (held.verified && held.dc.readyState === 'open' && wasmMemory) {
        try {
          // A view of the bytes where they are (the channel copies them): a 16 KiB chunk frame is not copied out
          // of the module first. No call into the module comes between the view and the send.
          held.dc.send(new Uint8Array(wasmMemory.buffer, out.ptr, out.byteLength));
        } catch {
          // Buffer full or closing: the page ends the connection, and what the contact did not confirm is relayed.
          post({ kind: 'channelEvent', member: to, event: 'failed' });
        }
      }
    } else {
      const bytes = out.bytes;
      self.postMessage({ kind: 'channelSend', to, bytes } satisfies Update, [bytes.buffer]);
    }
    out.free();
  }
  const sendable: string[] = [];
  for (const notice of notices) {
    const transfer = typeof notice.transfer === 'string' ? notice.transfer : '';
    switch (notice.type) {
      case 'connect':
        openSocket();
        break;
      case 'disconnect':
        socket?.close(1000);
        break;
      case 'fileSendable':
        // Not for the page: the next window of chunks is read and sealed after this step.
        sendable.push(transfer);
        continue;
      case 'fileReceived':
        sealed.close(transfer);
        break;
      case 'fileSent':
      case 'fileCancelled':
        sources.delete(transfer);
        break;
      case 'fileForgotten':
        layouts.delete(transfer);
        void sealed.remove(transfer);
        break;
    }
    post({ kind: 'notice', notice });
  }
  for (const transfer of sendable) queuePump(transfer);
  schedule();
  queueView();
}

function queueView(): void {
  if (viewQueued) return;
  viewQueued = true;
  const wait = Math.max(0, lastView + VIEW_EVERY_MS - Date.now());
  const show = () => {
    viewQueued = false;
    lastView = Date.now();
    if (!member) return;
    const view = JSON.parse(member.view()) as View;
    for (const f of view.files) f.needsFile = f.outgoing && f.state !== 'done' && !sources.has(f.transfer);
    post({ kind: 'view', view });
  };
  if (wait === 0) queueMicrotask(show);
  else setTimeout(show, wait);
}

/** Reads, seals and queues the chunks of an outgoing file that the window allows, in a step of its own. */
function queuePump(transfer: string): void {
  if (!sources.has(transfer)) return; // picked again by the member after a reload, or not ours
  void step((m) => {
    const source = sources.get(transfer);
    if (!source) return;

    // A chunk is taken from the core only once its bytes are read, so chunks still leave in order; a block
    // still being read pumps again when it lands.
    for (let want = m.peekFileChunk(transfer); want !== undefined; want = m.peekFileChunk(transfer)) {
      const { index, offset, len } = want;
      want.free();
      const bytes = source.read(offset, len);
      if (!bytes) break;
      m.nextFileChunk(transfer)?.free();
      m.sealFileChunk(transfer, index, bytes);
    }
  });
}

/** SHA-256 of a file, read in slices off the step queue (a large file takes seconds); progress as notices. */
async function hashFile(file: File, name: string): Promise<string> {
  const hash = new FileHash();
  const reader = file.stream().getReader();
  let done = 0;
  let told = 0;
  try {
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) break;
      hash.update(value);
      done += value.byteLength;
      if (Date.now() - told > 250) {
        told = Date.now();
        post({ kind: 'notice', notice: { type: 'filePreparing', name, done, total: file.size } });
      }
    }
  } catch (err) {
    hash.free();
    throw err;
  }
  return hash.finish();
}

/** Offers a file the member picked: hashed first, then offered inside the step queue. */
async function sendFile(peer: string, file: File): Promise<unknown> {
  const digest = await hashFile(file, file.name);
  return offerFile(peer, file, digest, undefined);
}

/** Offers a hashed file to `peer` (as part of a file sent to `group`, if given), inside the step queue. */
function offerFile(peer: string, file: File, digest: string, group: string | undefined): Promise<string> {
  return exclusive(async () => {
    const m = member;
    if (!m) throw new Error('locked');
    const id = m.offerFile(peer, file.name, file.size, digest, group, Date.now());
    sources.set(id, new FileSource(file, () => queuePump(id)));
    await flush();
    return id;
  });
}

/** How long a file sent to a group waits for a 1:1 conversation with a member to be set up. */
const DIRECT_WAIT_MS = 30_000;

/**
 * A file sent to a group: hashed once, then offered to each other member as its own transfer over the pair's
 * conversation and connection, shown in the group on both sides. A member with no 1:1 conversation yet gets one
 * first (they must be online for it). Says who it went to and who it could not.
 */
async function sendGroupFile(group: string, file: File): Promise<unknown> {
  const digest = await hashFile(file, file.name);
  const m = member;
  if (!m) throw new Error('locked');
  const others = JSON.parse(m.groupMembers(group)) as string[];
  const failed: Array<{ member: string; reason: string }> = [];
  await Promise.all(
    others.map(async (peer) => {
      try {
        await directWith(peer);
        await offerFile(peer, file, digest, group);
      } catch (err) {
        failed.push({ member: peer, reason: String(err instanceof Error ? err.message : err) });
      }
    }),
  );
  return { failed };
}

/** Waits until a 1:1 conversation with `peer` is set up, starting one if there is none. */
async function directWith(peer: string): Promise<void> {
  const ready = () => member?.hasDirect(peer) ?? false;
  if (ready()) return;
  await exclusive(async () => {
    const m = member;
    if (!m) throw new Error('locked');
    if (!m.hasDirect(peer)) m.startDirect(peer, Date.now());
    await flush();
  });
  const until = Date.now() + DIRECT_WAIT_MS;
  while (!ready()) {
    if (!member) throw new Error('locked');
    if (Date.now() > until) throw new Error('no_direct: no 1:1 conversation could be set up (is the member online?)');
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** After a reload the sender picks the file again: it goes on only if it is the same file (same SHA-256). */
async function resumeFile(transfer: string, file: File): Promise<unknown> {
  const m = member;
  if (!m) throw new Error('locked');
  const expected = layout(m, transfer);
  if (file.size !== expected.size || (await hashFile(file, file.name)) !== expected.sha256) {
    throw new Error('file_mismatch: this is not the file that was offered');
  }
  sources.set(transfer, new FileSource(file, () => queuePump(transfer)));
  queuePump(transfer);
  return null;
}

/** Incoming transfers a reload interrupted come back to where their kept chunks end, before any channel opens. */
async function replayKept(m: Member): Promise<void> {
  const view = JSON.parse(m.view()) as { files: Array<{ transfer: string; outgoing: boolean; state: string }> };
  for (const f of view.files) {
    if (f.outgoing || f.state !== 'moving') continue;
    await sealed.replay(f.transfer, layout(m, f.transfer), (index, bytes) => {
      try {
        m.replayFileChunk(f.transfer, index, bytes);
        return true;
      } catch {
        return false;
      }
    });
  }
  // What the replay queued (a transfer it completed says so to the sender) goes out; the state is saved once.
  m.finishReplay(Date.now());
}

function schedule(): void {
  if (timer !== undefined) clearTimeout(timer);
  timer = undefined;
  const at = member?.pollTimeout();
  if (at === undefined) return;
  timer = setTimeout(() => step((m) => m.handleTimeout(Date.now())), Math.max(0, at - Date.now()));
}

/** Runs `f` in the step queue (after every step before it, before every step after it); its error is its own. */
function exclusive<T>(f: () => Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    busy = busy.then(() => f().then(resolve, reject));
  });
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

/**
 * What arrived on the DataChannels and waits for a step, in arrival order. One step takes all of it: a file's
 * chunks come faster than one step each could follow (each step ends in a flush: records, frames, the timer, the
 * view), so under load the worker reads many chunks per step, and the disk is flushed and acknowledgements sent
 * once for all of them.
 */
const inbox: Array<[string, Uint8Array]> = [];
/** A step to read the inbox is queued. */
let inboxQueued = false;
/**
 * Chunks the core accepted from the inbox, to keep: their sealed bytes are the end of the frame that brought them
 * (`0xF1 || transfer (16) || index (4, BE) || ciphertext and tag`), so they are not copied back out of wasm.
 */
const arrived: Array<{ transfer: string; index: number; bytes: Uint8Array }> = [];
const CHUNK_HEADER = 1 + 16 + 4;

/** After `frame` was handled: the chunk it brought, if the core accepted one, goes to {@link arrived}. */
function keepArrived(m: Member, frame: Uint8Array): void {
  const chunk = m.nextSealedChunk();
  if (!chunk) return;
  const { transfer, index } = chunk;
  const header = new DataView(frame.buffer, frame.byteOffset, Math.min(frame.byteLength, CHUNK_HEADER));
  // The chunk is this frame's (the core hands out one per chunk frame, when it opens): checked, never assumed.
  const fromFrame = frame.byteLength > CHUNK_HEADER && header.getUint32(CHUNK_HEADER - 4) === index;
  const bytes = fromFrame ? frame.subarray(CHUNK_HEADER) : chunk.sealed;
  chunk.free();
  arrived.push({ transfer, index, bytes });
}

function receive(peer: string, bytes: Uint8Array): void {
  inbox.push([peer, bytes]);
  if (inboxQueued) return;
  inboxQueued = true;
  void step((m) => {
    inboxQueued = false;
    const now = Date.now();
    for (const [from, frame] of inbox.splice(0)) {
      try {
        m.handleChannel(from, frame, now);
        keepArrived(m, frame);
      } catch (err) {
        // One refused frame does not drop the ones after it.
        post({ kind: 'notice', notice: { type: 'error', message: String(err instanceof Error ? err.message : err) } });
      }
    }
  });
}

/** Takes the DataChannel the page handed over; the page hears when it opens or closes. */
function adoptChannel(peer: string, dc: RTCDataChannel): void {
  dropChannel(peer);
  const held = { dc, verified: false, early: [] as Uint8Array[] };
  channels.set(peer, held);
  dc.binaryType = 'arraybuffer';
  dc.onopen = () => post({ kind: 'channelEvent', member: peer, event: 'open' });
  dc.onmessage = (e: MessageEvent) => {
    if (!(e.data instanceof ArrayBuffer) || e.data.byteLength === 0) return;
    const bytes = new Uint8Array(e.data);
    if (!held.verified) {
      if (held.early.length < 64) held.early.push(bytes);
      return;
    }
    receive(peer, bytes);
  };
  dc.onclose = () => {
    if (channels.get(peer) !== held) return;
    channels.delete(peer);
    post({ kind: 'channelEvent', member: peer, event: 'closed' });
  };
  if (dc.readyState === 'open') post({ kind: 'channelEvent', member: peer, event: 'open' });
}

function dropChannel(peer: string): void {
  const held = channels.get(peer);
  channels.delete(peer);
  held?.dc.close();
}

function closeMember(): void {
  for (const peer of [...channels.keys()]) dropChannel(peer);
  inbox.length = 0;
  inboxQueued = false;
  arrived.length = 0;
  sealed.closeAll();
  sources.clear();
  layouts.clear();
  const s = socket;
  socket = undefined;
  s?.close(1000);
  if (timer !== undefined) clearTimeout(timer);
  timer = undefined;
  member?.free();
  member = undefined;
}

async function start(): Promise<void> {
  void SealedFiles.clearExports();
  const response = fetch(wasmUrl, { integrity: WASM_INTEGRITY });
  wasmMemory = (await init({ module_or_path: response })).memory;
  db = await openDb();
  // One tab at a time opens the key store: the lock is held for the worker's life. After a reload the page
  // before it may still be ending (its worker busy with a transfer, say): wait a few seconds for its lock before
  // saying another tab has it.
  const held = await new Promise<boolean>((resolve) => {
    navigator.locks
      .request('peerbubble-member', { signal: AbortSignal.timeout(LOCK_WAIT_MS) }, () => {
        resolve(true);
        return new Promise<void>(() => undefined);
      })
      .catch(() => resolve(false));
  });
  if (!held) return setPhase({ phase: 'otherTab' });
  await lockedPhase();
  // While the member reads the lock (or enrolment) screen: a throw-away conversation in memory, so that the
  // first real one does not wait for the engine to compile the MLS code (about 100 ms saved, on the click).
  setTimeout(warmUp, 0);
}

async function lockedPhase(): Promise<void> {
  if (!db) return;
  const device = await readDevice(db);
  if (!device) return setPhase({ phase: 'enroll' });
  const backoff = await readBackoff(db);
  setPhase({ phase: 'locked', bubble: await readAccountBubble(db), retryAt: backoff.retryAt, securityKey: await readSecurityKey(db) });
}

async function enroll(link: string, passphrase: string, securityKey: NewSecurityKey | undefined): Promise<unknown> {
  if (!db) throw new Error('storage is not open');
  if (phase.phase !== 'enroll') throw new Error('this device is already enrolled');
  const enrollment = new Enrollment(link);
  // The security key's secret is handed to the key store and zeroed there; the worker keeps only which key it is.
  const securitySecret = securityKey?.secret ?? new Uint8Array(0);
  const response = await fetch('/api/v1/enroll', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: enrollment.request(),
  });
  const text = await response.text();
  if (!response.ok) {
    enrollment.free();
    securitySecret.fill(0);
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
  let m: Member;
  try {
    m = enrollment.finish(text, secret, passphrase, securitySecret);
  } finally {
    secret.fill(0);
    securitySecret.fill(0);
  }
  const writes: Array<[string, Uint8Array | undefined]> = [];
  for (let rec = m.nextWrite(); rec !== undefined; rec = m.nextWrite()) {
    writes.push([rec.name, rec.value]);
    rec.free();
  }
  await createAccount(db, entry, writes, m.bubble, securityKey ? { credential: securityKey.credential, salt: securityKey.salt } : null);
  member = m;
  setPhase({ phase: 'open' });
  await step(() => undefined);
  return { member: m.id, bubble: m.bubble };
}

async function unlock(passphrase: string, securitySecret: Uint8Array = new Uint8Array(0)): Promise<unknown> {
  try {
    return await unlockWith(passphrase, securitySecret);
  } finally {
    securitySecret.fill(0);
  }
}

async function unlockWith(passphrase: string, securitySecret: Uint8Array): Promise<unknown> {
  if (!db) throw new Error('storage is not open');
  if (phase.phase !== 'locked') throw new Error('nothing to unlock');
  const backoff = await readBackoff(db);
  if (backoff.retryAt > Date.now()) throw new Error(`wait: ${Math.ceil((backoff.retryAt - Date.now()) / 1000)}`);
  const device = await readDevice(db);
  if (!device) throw new Error('no key store on this device');
  const vault = new Vault();
  for (const [name, value] of await readRecords(db)) vault.add(name, value);
  // Without its security key the store cannot open: say so, and do not count it as a wrong passphrase.
  if (securitySecret.byteLength === 0 && vault.needsHardwareKey()) {
    vault.free();
    throw new Error('hardware_key_needed: this device opens only with its security key');
  }
  const secret = await unwrapDevice(device);
  try {
    member = vault.unlock(secret, passphrase, securitySecret);
  } catch (err) {
    const retryAt = await countFailure(db, backoff);
    setPhase({ phase: 'locked', bubble: await readAccountBubble(db), retryAt, securityKey: await readSecurityKey(db) });
    throw err;
  } finally {
    secret.fill(0);
  }
  await writeBackoff(db, { failures: 0, retryAt: 0 });
  await replayKept(member);
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
      return enroll(command.link, command.passphrase, command.securityKey);
    case 'unlock':
      return unlock(command.passphrase, command.securitySecret);
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
    // In the task the channel arrived in: its events are not missed.
    if (command.kind === 'adoptChannel' || command.kind === 'dropChannel') {
      if (command.kind === 'adoptChannel') adoptChannel(command.member, command.channel);
      else dropChannel(command.member);
      post({ kind: 'reply', id, ok: true, value: null });
      return;
    }
    // Reading a file to hash it takes a while: not inside a step, so messages keep flowing meanwhile.
    if (member && command.kind === 'sendFile') {
      post({ kind: 'reply', id, ok: true, value: await sendFile(command.member, command.file) });
      return;
    }
    if (member && command.kind === 'sendGroupFile') {
      post({ kind: 'reply', id, ok: true, value: await sendGroupFile(command.group, command.file) });
      return;
    }
    if (member && command.kind === 'resumeFile') {
      post({ kind: 'reply', id, ok: true, value: await resumeFile(command.transfer, command.file) });
      return;
    }
    // A read of what signaling handed out, asked for by the page at each connection it makes: answered at once,
    // not behind the steps queued (the contact's trickled candidates, say), which would hold the answer back.
    if (member && command.kind === 'iceServers') {
      post({ kind: 'reply', id, ok: true, value: JSON.parse(member.iceServers()) as unknown });
      return;
    }
    if (member && command.kind !== 'hello' && command.kind !== 'lock') {
      // Commands on the member run inside a step so that they are ordered with network events.
      const value = await exclusive(() => runDirect(command));
      post({ kind: 'reply', id, ok: true, value });
    } else {
      post({ kind: 'reply', id, ok: true, value: await run(command) });
    }
  } catch (err) {
    post({ kind: 'reply', id, ok: false, error: String(err instanceof Error ? err.message : err) });
  }
}

type ChangeProtection = Extract<Command, { kind: 'changeProtection' }>;

/**
 * A new passphrase and/or security key. Inside the step queue: the re-encrypted records and the key the store now
 * asks for are written in one transaction before anything else runs. A wrong current passphrase counts towards
 * the same back-off as unlocking (the screen is open, but whoever sits at it has not shown they know it).
 */
async function changeProtection(m: Member, c: ChangeProtection): Promise<unknown> {
  const current = c.securitySecret ?? new Uint8Array(0);
  const fresh = typeof c.securityKey === 'object' ? c.securityKey.secret : new Uint8Array(0);
  try {
    if (!db) throw new Error('storage is not open');
    const backoff = await readBackoff(db);
    if (backoff.retryAt > Date.now()) throw new Error(`wait: ${Math.ceil((backoff.retryAt - Date.now()) / 1000)}`);
    const device = await readDevice(db);
    if (!device) throw new Error('no key store on this device');
    const before = await readSecurityKey(db);
    const secret = await unwrapDevice(device);
    const mode = typeof c.securityKey === 'object' ? 'new' : c.securityKey;
    try {
      m.changeProtection(secret, c.passphrase, current, c.newPassphrase, mode, fresh);
    } catch (err) {
      if (String(err instanceof Error ? err.message : err).startsWith('wrong_segments')) await countFailure(db, backoff);
      throw err;
    } finally {
      secret.fill(0);
    }
    const writes: Array<[string, Uint8Array | undefined]> = [];
    for (let rec = m.nextWrite(); rec !== undefined; rec = m.nextWrite()) {
      writes.push([rec.name, rec.value]);
      rec.free();
    }
    const key = typeof c.securityKey === 'object' ? { credential: c.securityKey.credential, salt: c.securityKey.salt } : c.securityKey === 'keep' ? before : null;
    await writeProtection(db, writes, key);
    return { securityKey: key };
  } finally {
    current.fill(0);
    fresh.fill(0);
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
    case 'protection':
      value = { securityKey: db ? await readSecurityKey(db) : null };
      break;
    case 'changeProtection':
      value = await changeProtection(m, command);
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
    case 'rtcCandidate':
      m.sendCandidate(command.member, command.candidate, now);
      break;
    case 'rtcVerify':
      value = m.verifyDtls(command.member, command.certificate, now);
      break;
    case 'rtcHangup':
      m.hangup(command.member, now);
      break;
    case 'channel': {
      m.channel(command.member, command.open, now);
      const held = channels.get(command.member);
      if (held && command.open) {
        // The certificate is the contact's: what arrived meanwhile is read now, in order, and sending starts.
        held.verified = true;
        for (const bytes of held.early.splice(0)) m.handleChannel(command.member, bytes, now);
      } else if (!command.open) {
        dropChannel(command.member);
      }
      break;
    }
    case 'channelData':
      m.handleChannel(command.member, command.bytes, now);
      break;
    case 'acceptFile':
      m.acceptFile(command.transfer, now);
      break;
    case 'cancelFile':
      m.cancelFile(command.transfer, now);
      break;
    case 'holdFile':
      m.holdFile(command.transfer, command.held, now);
      break;
    case 'forgetFile':
      m.forgetFile(command.transfer, now);
      break;
    case 'ring':
      value = m.ring(command.member, command.video, now);
      break;
    case 'answerRing':
      m.answerRing(command.member, command.ring, command.accept, now);
      break;
    case 'endRing':
      m.endRing(command.member, command.ring, command.busy, now);
      break;
    case 'ringGroup':
      value = m.ringGroup(command.group, command.video, now);
      break;
    case 'joinGroupCall':
      m.joinGroupCall(command.group, command.ring, now);
      break;
    case 'leaveGroupCall':
      m.leaveGroupCall(command.group, command.ring, now);
      break;
    case 'openFile': {
      const name = command.name;
      value = await sealed.decrypt(command.transfer, name, layout(m, command.transfer), (index, bytes) =>
        m.openStoredChunk(command.transfer, index, bytes),
      );
      break;
    }
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
