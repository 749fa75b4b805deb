// `cargo xtask bench browser-media`, the browser half (xtask prints the last line). In one Chromium (fake camera
// and microphone), against one real `peerbubble up`, rounds alternating which side goes first:
// - file: a browser-to-browser file through the web client (from "Accept" to the receiver's card saying it is
//   whole and checked: hashing, sealing, MLS-keyed chunks, OPFS at rest included), against two raw pages sending
//   the same bytes over one RTCPeerConnection's DataChannel in the same 16 KiB messages, with nothing else (the
//   issue's baseline, `file_ratio`), and against the same raw pages reading the picked file and writing what
//   arrives to OPFS (no encryption, hash or acknowledgement: the file work any browser transfer does; printed
//   beside it);
// - call: from clicking "Video call" (the callee's page accepts as soon as it rings) to the caller's first decoded
//   remote video frame, against two raw pages that open an RTCPeerConnection with the same fake tracks (offer and
//   answer handed over directly) until their first decoded frame.
// - relay: the same raw DataChannel pages, both forced through a TURN relay (iceTransportPolicy "relay"), once
//   through PeerBubble's embedded TURN (a release `peerbubble bubble-server`) and once through coturn, both on
//   loopback with the same shared-secret credentials and the same openings (loopback peers, no bandwidth cap).
// Both file transfers run between two browser profiles on disk (a persistent context each, as a member's browser
// is), not in incognito contexts: there OPFS lives in memory behind the browser process, and writing the received
// file cost the receiving worker a third of the transfer (a cost members do not have).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import { type AddressInfo, createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Browser, type BrowserContext, type Page, chromium } from 'playwright-core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { CHROMIUM_ARGS, CHROMIUM_PATH, type Member, type Up, enroll, invite, newMember, open, startUp } from '../e2e/harness';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const FILE_MB = Number(process.env.BENCH_FILE_MB ?? 256);
const FILE_BYTES = FILE_MB << 20;
/** `BENCH_ONLY=file`: only the two file transfers (to look into one figure); the result then lacks the others. */
const ONLY_FILE = process.env.BENCH_ONLY === 'file';
/** The web client's chunk frames are 16 KiB; the raw pages send messages of the same size. */
const MESSAGE = 16 * 1024;
const scratch = mkdtempSync(join(tmpdir(), 'peerbubble-bench-media-'));

let up: Up;
let browser: Browser;
let pages = '';
let server: Server | undefined;
/** The two TURN relays under comparison (ICE server entries with fresh credentials) and their processes. */
let relays: { ours: RTCIceServer; coturn: RTCIceServer } | undefined;
const relayProcesses: ChildProcess[] = [];
/** Both relays take TURN REST credentials made with this secret (40 characters, as `cargo xtask bench turn`). */
const RELAY_SECRET = 'bench-secret-0123456789abcdef0123456789';

async function freePort(kind: 'udp' | 'tcp'): Promise<number> {
  if (kind === 'udp') {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    const { port } = socket.address();
    socket.close();
    return port;
  }
  const probe = createTcpServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  probe.close();
  return port;
}

/** TURN REST credentials (username "expiry:user", password base64 HMAC-SHA1), as the bubble issues them. */
function credentials(urls: string, user: string): RTCIceServer {
  const username = `${Math.floor(Date.now() / 1000) + 3600}:${user}`;
  return { urls, username, credential: createHmac('sha1', RELAY_SECRET).update(username).digest('base64') };
}

/** Starts PeerBubble's TURN (a release bubble-server) and coturn side by side on loopback. */
async function startRelays(): Promise<void> {
  const bin = process.env.PEERBUBBLE_RELEASE_BIN;
  if (!bin) throw new Error('PEERBUBBLE_RELEASE_BIN is not set (run through `cargo xtask bench browser-media`)');
  const keygen = execFileSync(bin, ['keygen', '--out', join(scratch, 'relay.key')], { encoding: 'utf8' });
  const field = (name: string) => keygen.split('\n').find((l) => l.startsWith(name))?.slice(name.length).trim() ?? '';
  const [publicKey, member] = [field('public_key:'), field('member_id:')];
  writeFileSync(
    join(scratch, 'bubble.yaml'),
    `bubble: bench\ncategories:\n  - {id: all}\nmembers:\n  - {public_key: ${publicKey}, display_name: Bench, categories: [all]}\n`,
  );
  writeFileSync(join(scratch, 'turn-secret'), RELAY_SECRET);
  const [signal, ours, coturn] = [await freePort('tcp'), await freePort('udp'), await freePort('udp')];
  const quiet = { stdio: 'ignore' as const, env: { ...process.env, RUST_LOG: 'warn' } };
  relayProcesses.push(
    spawn(
      bin,
      [
        ...['bubble-server', '--listen', `127.0.0.1:${signal}`, '--bubble-file', join(scratch, 'bubble.yaml')],
        ...['--turn-secret-file', join(scratch, 'turn-secret'), '--turn-udp-port', String(ours), '--turn-tls-port', '0'],
        // The same openings coturn gets: loopback peers, no bandwidth cap.
        ...['--turn-allow-peers', '127.0.0.0/8', '--turn-bandwidth', '0', '--turn-relay-ports', '50000-59999'],
        // Every round leaves allocations behind until they expire: no per-member quota, as coturn has none here.
        ...['--turn-max-allocations-per-member', '100000', '--turn-max-allocations', '100000'],
      ],
      quiet,
    ),
    spawn(
      'turnserver',
      [
        ...['--listening-ip', '127.0.0.1', '--listening-port', String(coturn), '--relay-ip', '127.0.0.1'],
        ...['--min-port', '40000', '--max-port', '49999', '--use-auth-secret', `--static-auth-secret=${RELAY_SECRET}`, '--realm=peerbubble'],
        ...['--allow-loopback-peers', '--no-tls', '--no-dtls', '--no-cli', '--log-file', '/dev/null'],
      ],
      quiet,
    ),
  );
  for (let attempt = 0; ; attempt++) {
    try {
      if ((await fetch(`http://127.0.0.1:${signal}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (attempt > 100) throw new Error('the bubble-server did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 500));
  relays = {
    ours: credentials(`turn:127.0.0.1:${ours}?transport=udp`, member),
    coturn: credentials(`turn:127.0.0.1:${coturn}?transport=udp`, member),
  };
}

beforeAll(async () => {
  server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>raw</title>'));
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', resolve));
  pages = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  [up, , browser] = await Promise.all([
    startUp(),
    ONLY_FILE ? Promise.resolve() : startRelays(),
    chromium.launch({
      executablePath: CHROMIUM_PATH,
      args: [...CHROMIUM_ARGS, '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'],
    }),
  ]);
});

afterAll(async () => {
  await browser?.close();
  await up?.stop();
  for (const p of relayProcesses) p.kill();
  server?.close();
  rmSync(scratch, { recursive: true, force: true });
});

/** The machine's busy CPU time so far, in seconds (/proc/stat: every state but idle and iowait). */
function busySeconds(): number {
  const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1, 9).map(Number);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return (fields.reduce((a, b) => a + b, 0) - idle) / 100;
}
/** CPU seconds so far of each Chromium process, by pid: [kind (browser, renderer, gpu-process, utility…), seconds]. */
function chromiumCpu(): Map<number, [string, number]> {
  const out = new Map<number, [string, number]>();
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      // Chromium sets its children's titles: their arguments may come as one string, spaced.
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split(/[\0 ]/);
      if (!(cmdline[0] ?? '').includes('chrom')) continue;
      const kind = cmdline.find((a) => a.startsWith('--type='))?.slice(7) ?? 'browser';
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(pid), [kind, (Number(fields[11]) + Number(fields[12])) / 100]);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Chromium's CPU seconds between two {@link chromiumCpu} readings, by kind of process, e.g. "renderer 6.1". */
function chromiumCpuSince(before: Map<number, [string, number]>): string {
  const kinds = new Map<string, number>();
  for (const [pid, [kind, seconds]] of chromiumCpu()) kinds.set(kind, (kinds.get(kind) ?? 0) + seconds - (before.get(pid)?.[1] ?? 0));
  return [...kinds].sort((a, b) => b[1] - a[1]).map(([kind, s]) => `${kind} ${s.toFixed(1)}`).join(', ');
}

/** CPU seconds the whole machine spent on each file transfer (both browsers, every process). */
const fileCpuS: { ours: number[]; raw: number[]; rawDisk: number[] } = { ours: [], raw: [], rawDisk: [] };
/** Chromium's share of it, by kind of process (see {@link chromiumCpuSince}). */
const fileCpuByProcess: { ours: string[]; raw: string[]; rawDisk: string[] } = { ours: [], raw: [], rawDisk: [] };

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

/**
 * `BENCH_PROFILE=<dir>` (run with `NODE_OPTIONS=--experimental-websocket` on Node 20): the web client's file rounds
 * write a CPU profile (`.cpuprofile`, for Chromium's DevTools) of every page and worker of both browsers to `dir`,
 * and `node bench/profile-summary.mjs <dir>` sums them by function. Not for figures: the profiler costs time.
 */
const PROFILE_DIR = process.env.BENCH_PROFILE;
/** The DevTools endpoint of each browser profile, by its context (only with {@link PROFILE_DIR}). */
const devtools = new WeakMap<BrowserContext, string>();

/** A browser profile on disk (its own Chromium), as a member's browser is; closing the context ends it. */
async function profile(): Promise<BrowserContext> {
  const dir = mkdtempSync(join(scratch, 'profile-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM_PATH,
    args: PROFILE_DIR ? [...CHROMIUM_ARGS, '--remote-debugging-port=0'] : CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
    locale: 'en-US',
  });
  if (PROFILE_DIR) {
    const [port, path] = readFileSync(join(dir, 'DevToolsActivePort'), 'utf8').split('\n');
    devtools.set(context, `ws://127.0.0.1:${port}${path}`);
  }
  return context;
}

/**
 * Starts Chromium's sampling profiler on every page and worker of `context`'s browser; the function returned stops
 * them and writes their profiles to {@link PROFILE_DIR} as `<label>-<type>-<n>.cpuprofile`.
 */
async function startProfiling(context: BrowserContext, label: string): Promise<() => Promise<void>> {
  const endpoint = devtools.get(context);
  if (!endpoint || !PROFILE_DIR) return async () => {};
  const ws = new WebSocket(endpoint);
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  let next = 0;
  const waiting = new Map<number, [(result: Record<string, unknown>) => void, (err: Error) => void]>();
  ws.onmessage = (e: MessageEvent) => {
    const message = JSON.parse(String(e.data)) as { id?: number; result?: Record<string, unknown>; error?: unknown };
    const [resolve, reject] = waiting.get(message.id ?? -1) ?? [];
    if (message.error) reject?.(new Error(`DevTools: ${JSON.stringify(message.error)}`));
    else resolve?.(message.result ?? {});
  };
  const send = (method: string, params: object = {}, sessionId?: string) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const id = ++next;
      waiting.set(id, [resolve, reject]);
      ws.send(JSON.stringify({ id, method, params, sessionId }));
    });
  const { targetInfos } = (await send('Target.getTargets')) as { targetInfos: Array<{ targetId: string; type: string }> };
  const sessions: Array<[string, string]> = [];
  for (const target of targetInfos.filter((t) => t.type === 'page' || t.type === 'worker')) {
    const { sessionId } = (await send('Target.attachToTarget', { targetId: target.targetId, flatten: true })) as { sessionId: string };
    await send('Profiler.enable', {}, sessionId);
    await send('Profiler.setSamplingInterval', { interval: 200 }, sessionId);
    await send('Profiler.start', {}, sessionId);
    sessions.push([target.type, sessionId]);
  }
  return async () => {
    for (const [n, [type, sessionId]] of sessions.entries()) {
      const { profile } = await send('Profiler.stop', {}, sessionId);
      writeFileSync(join(PROFILE_DIR, `${label}-${type}-${n}.cpuprofile`), JSON.stringify(profile));
    }
    ws.close();
  };
}

/** {@link startProfiling} on both ends of a transfer, `<label>-sender` and `<label>-receiver`; the function returned stops both. */
async function profileTransfer(sender: BrowserContext, receiver: BrowserContext, label: string): Promise<() => Promise<void>> {
  const stops = [await startProfiling(sender, `${label}-sender`), await startProfiling(receiver, `${label}-receiver`)];
  return async () => {
    for (const stop of stops) await stop();
  };
}

/** The page a new profile opens with. */
async function profilePage(): Promise<Page> {
  const context = await profile();
  return context.pages()[0] ?? context.newPage();
}

async function profileMember(): Promise<Member> {
  const page = await profilePage();
  return { context: page.context(), page, frames: [], sent: [] };
}

/** Two members of the web client with a direct link open between them (in profiles on disk with `onDisk`). */
async function members(round: number, onDisk = false) {
  const [a, b] = onDisk ? [await profileMember(), await profileMember()] : [await newMember(browser), await newMember(browser)];
  const bName = `Bob ${round} (bench)`;
  const aName = `Alice ${round} (bench)`;
  await enroll(a, await invite(up, aName, ['field-team']));
  await enroll(b, await invite(up, bName, ['field-team']));
  await expect.poll(() => a.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain(bName);
  await open(a.page, bName);
  await expect.poll(() => b.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain(aName);
  await open(b.page, aName);
  await expect.poll(() => a.page.locator('.pane-head .tag.link').innerText(), { timeout: 60_000 }).toBe('Direct connection');
  return [a, b] as const;
}

async function oursFile(round: number, path: string): Promise<number> {
  const [a, b] = await members(round, true);
  await a.page.locator('input[type=file][aria-label="Send a file"]').setInputFiles(path);
  const accept = b.page.locator('.message.file').getByRole('button', { name: 'Accept' });
  await accept.waitFor({ timeout: 120_000 });
  const stopProfiling = await profileTransfer(a.context, b.context, `round${round}`);
  const started = Date.now();
  const cpu = busySeconds();
  const processes = chromiumCpu();
  await accept.click();
  await b.page.waitForFunction(() => document.querySelector('.message.file')?.getAttribute('data-state') === 'done', null, {
    polling: 100,
    timeout: 1_200_000,
  });
  const ms = Date.now() - started;
  await stopProfiling();
  fileCpuS.ours.push(busySeconds() - cpu);
  fileCpuByProcess.ours.push(chromiumCpuSince(processes));
  await Promise.all([a.context.close(), b.context.close()]);
  return ms;
}

/**
 * Two raw pages with one RTCPeerConnection between them (offer and answer handed over by the bench), in the shared
 * browser's contexts or (`onDisk`) in two browser profiles on disk, as the web client's file rounds run.
 */
async function rawPair(media: boolean, relay?: RTCIceServer, onDisk = false): Promise<[Page, Page]> {
  const config = JSON.stringify(relay ? { iceServers: [relay], iceTransportPolicy: 'relay' } : {});
  const page = async () => (onDisk ? profilePage() : (await browser.newContext()).newPage());
  const [p1, p2] = [await page(), await page()];
  await Promise.all([p1.goto(pages), p2.goto(pages)]);
  const setup = `window.gathered = (pc) => new Promise((r) => {
    if (pc.iceGatheringState === 'complete') return r();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && r());
  });
  window.frames0 = async () => { let n = 0; (await window.pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') n += s.framesDecoded || 0; }); return n; };`;
  await Promise.all([p1.evaluate(setup), p2.evaluate(setup)]);
  const offer = await p1.evaluate(`(async () => {
    const pc = new RTCPeerConnection(${config}); window.pc = pc;
    const ch = pc.createDataChannel('raw', { ordered: true }); ch.binaryType = 'arraybuffer'; window.ch = ch;
    if (${media}) window.local = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    await pc.setLocalDescription(await pc.createOffer()); await window.gathered(pc); return pc.localDescription.sdp;
  })()`);
  const answer = await p2.evaluate(`(async () => {
    const pc = new RTCPeerConnection(${config}); window.pc = pc; window.got = 0;
    pc.ondatachannel = (e) => { e.channel.binaryType = 'arraybuffer'; e.channel.onmessage = (m) => { window.got += m.data.byteLength; }; };
    await pc.setRemoteDescription({ type: 'offer', sdp: ${JSON.stringify(offer)} });
    await pc.setLocalDescription(await pc.createAnswer()); await window.gathered(pc); return pc.localDescription.sdp;
  })()`);
  await p1.evaluate(`(async () => {
    await window.pc.setRemoteDescription({ type: 'answer', sdp: ${JSON.stringify(answer)} });
    await new Promise((r, fail) => { if (window.ch.readyState === 'open') r(); window.ch.onopen = r; setTimeout(() => fail(new Error('the raw channel did not open in 60 s')), 60000); });
  })()`);
  return [p1, p2];
}

/** Raw file rounds so far (the profiles' names). */
let rawRounds = 0;

async function rawFile(relay?: RTCIceServer): Promise<number> {
  const [p1, p2] = await rawPair(false, relay, !relay);
  if (relay) {
    // Both ends must really be relayed: the selected pair's local candidate is a relay one on each page.
    for (const page of [p1, p2]) {
      const type = await page.evaluate(`(async () => { const r = await window.pc.getStats(); let t = null;
        r.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) { const p = r.get(s.selectedCandidatePairId); t = r.get(p.localCandidateId)?.candidateType; } });
        return t; })()`);
      expect(type).toBe('relay');
    }
  }
  const stopProfiling = relay ? async () => {} : await profileTransfer(p1.context(), p2.context(), `raw${++rawRounds}`);
  const started = Date.now();
  const cpu = busySeconds();
  const processes = chromiumCpu();
  await p1.evaluate(`(async () => {
    const ch = window.ch; const message = new Uint8Array(${MESSAGE}); let sent = 0;
    ch.bufferedAmountLowThreshold = 1 << 20;
    while (sent < ${FILE_BYTES}) {
      if (ch.bufferedAmount > 4 << 20) await new Promise((r) => { ch.onbufferedamountlow = r; });
      ch.send(message); sent += message.byteLength;
    }
  })()`);
  await p2.waitForFunction(`window.got >= ${FILE_BYTES}`, null, { polling: 50, timeout: 1_200_000 });
  const ms = Date.now() - started;
  await stopProfiling();
  if (!relay) fileCpuS.raw.push(busySeconds() - cpu);
  if (!relay) fileCpuByProcess.raw.push(chromiumCpuSince(processes));
  await Promise.all([p1.context().close(), p2.context().close()]);
  return ms;
}

/**
 * The raw pages moving the file itself, with the file work the web client cannot skip and nothing else: the sender
 * reads the picked file in 1 MiB blocks (as the web client's worker does) and sends it in the same 16 KiB messages;
 * the receiving page hands its DataChannel to a worker that writes each message to a file in OPFS through a
 * synchronous handle as it arrives, flushed once at the end. No encryption, no hash, no acknowledgement, no
 * durability before the end: a floor for any browser file transfer that reads and keeps the file, beside the raw
 * channel alone (`rawFile`).
 */
async function rawFileWithDisk(path: string): Promise<number> {
  const [p1, p2] = await rawPair(false, undefined, true);
  await p1.evaluate(`document.body.innerHTML = '<input type="file" id="pick">'`);
  await p1.locator('#pick').setInputFiles(path);
  await p2.evaluate(`(() => {
    const code = \`let at = 0; let handle;
      const ready = navigator.storage.getDirectory()
        .then((root) => root.getFileHandle('received.bin', { create: true }))
        .then((file) => file.createSyncAccessHandle()).then((h) => { handle = h; handle.truncate(0); });
      onmessage = async (e) => {
        await ready;
        const ch = e.data; ch.binaryType = 'arraybuffer';
        ch.onmessage = (m) => {
          at += handle.write(new Uint8Array(m.data), { at });
          if (at >= ${FILE_BYTES}) { handle.flush(); handle.close(); postMessage(at); }
        };
        postMessage(0);
      };\`;
    window.disk = new Worker(URL.createObjectURL(new Blob([code], { type: 'text/javascript' })));
    window.diskReady = new Promise((r) => { window.disk.onmessage = () => { window.disk.onmessage = (e) => { window.got = e.data; }; r(); }; });
  })()`);
  // A second channel, negotiated on the open connection, goes to the worker in the task that announced it.
  await p2.evaluate(`window.diskChannel = new Promise((r) => {
    window.pc.ondatachannel = (e) => { window.disk.postMessage(e.channel, [e.channel]); r(); };
  }).then(() => window.diskReady); 0`);
  await p1.evaluate(`new Promise((r) => { const ch = window.pc.createDataChannel('file', { ordered: true }); ch.onopen = r; window.fileCh = ch; })`);
  await p2.evaluate('window.diskChannel');
  const stopProfiling = await profileTransfer(p1.context(), p2.context(), `rawdisk${++rawRounds}`);
  const started = Date.now();
  const cpu = busySeconds();
  const processes = chromiumCpu();
  await p1.evaluate(`(async () => {
    const file = document.getElementById('pick').files[0]; const ch = window.fileCh;
    ch.bufferedAmountLowThreshold = 1 << 20;
    const read = (at) => (at < file.size ? file.slice(at, Math.min(file.size, at + (1 << 20))).arrayBuffer() : null);
    let next = read(0);
    for (let at = 0; at < file.size; at += 1 << 20) {
      const block = new Uint8Array(await next);
      next = read(at + (1 << 20)); // the next block is read while this one is sent
      for (let i = 0; i < block.byteLength; i += ${MESSAGE}) {
        if (ch.bufferedAmount > 4 << 20) await new Promise((r) => { ch.onbufferedamountlow = r; });
        ch.send(block.subarray(i, Math.min(block.byteLength, i + ${MESSAGE})));
      }
    }
  })()`);
  await p2.waitForFunction(`window.got >= ${FILE_BYTES}`, null, { polling: 50, timeout: 1_200_000 });
  const ms = Date.now() - started;
  await stopProfiling();
  fileCpuS.rawDisk.push(busySeconds() - cpu);
  fileCpuByProcess.rawDisk.push(chromiumCpuSince(processes));
  await Promise.all([p1.context().close(), p2.context().close()]);
  return ms;
}

async function oursCall(round: number): Promise<number> {
  const [a, b] = await members(round);
  const started = Date.now();
  await a.page.getByRole('button', { name: 'Video call' }).click();
  await b.page.getByRole('dialog', { name: 'Incoming call' }).getByRole('button', { name: 'Accept' }).click({ timeout: 30_000 });
  await a.page.waitForFunction(
    async () => ((await (window as unknown as { peerbubbleDiagnostics: { callStats: () => Promise<{ videoFrames: number[] } | null> } }).peerbubbleDiagnostics.callStats())?.videoFrames[0] ?? 0) > 0,
    null,
    { polling: 20, timeout: 60_000 },
  );
  const ms = Date.now() - started;
  await Promise.all([a.context.close(), b.context.close()]);
  return ms;
}

async function rawCall(): Promise<number> {
  const [p1, p2] = [await (await browser.newContext()).newPage(), await (await browser.newContext()).newPage()];
  await Promise.all([p1.goto(pages), p2.goto(pages)]);
  const started = Date.now();
  const offer = await p1.evaluate(`(async () => {
    const pc = new RTCPeerConnection(); window.pc = pc;
    const local = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    for (const t of local.getTracks()) pc.addTrack(t, local);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => { if (pc.iceGatheringState === 'complete') return r(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
    return pc.localDescription.sdp;
  })()`);
  const answer = await p2.evaluate(`(async () => {
    const pc = new RTCPeerConnection(); window.pc = pc;
    const local = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    await pc.setRemoteDescription({ type: 'offer', sdp: ${JSON.stringify(offer)} });
    for (const t of local.getTracks()) pc.addTrack(t, local);
    await pc.setLocalDescription(await pc.createAnswer());
    await new Promise((r) => { if (pc.iceGatheringState === 'complete') return r(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
    return pc.localDescription.sdp;
  })()`);
  await p1.evaluate(`window.pc.setRemoteDescription({ type: 'answer', sdp: ${JSON.stringify(answer)} })`);
  await p1.waitForFunction(
    `(async () => { let n = 0; (await window.pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') n += s.framesDecoded || 0; }); return n > 0; })()`,
    null,
    { polling: 20, timeout: 60_000 },
  );
  const ms = Date.now() - started;
  await Promise.all([p1.context().close(), p2.context().close()]);
  return ms;
}

test('bench browser-media', async () => {
  const path = join(scratch, 'bench.bin');
  const block = Buffer.alloc(1 << 20);
  for (let i = 0; i < block.length; i++) block[i] = (i * 2_654_435_761) >>> 24;
  writeFileSync(path, Buffer.concat(Array.from({ length: FILE_MB }, () => block)));
  const oursFileMs: number[] = [];
  const rawFileMs: number[] = [];
  const rawDiskFileMs: number[] = [];
  const oursCallMs: number[] = [];
  const rawCallMs: number[] = [];
  const relayOursMs: number[] = [];
  const relayCoturnMs: number[] = [];
  const fileRound = () =>
    `file ours ${oursFileMs.at(-1)} ms (${fileCpuS.ours.at(-1)?.toFixed(1)} CPU s), raw ${rawFileMs.at(-1)} ms (${fileCpuS.raw.at(-1)?.toFixed(1)} CPU s), ` +
    `raw reading and storing the file ${rawDiskFileMs.at(-1)} ms (${fileCpuS.rawDisk.at(-1)?.toFixed(1)} CPU s)\n` +
    `  Chromium's CPU s by process: ours ${fileCpuByProcess.ours.at(-1)}; raw ${fileCpuByProcess.raw.at(-1)}; raw reading and storing ${fileCpuByProcess.rawDisk.at(-1)}`;
  for (let round = 1; round <= ROUNDS && ONLY_FILE; round++) {
    if (round % 2 === 0) oursFileMs.push(await oursFile(round, path));
    rawFileMs.push(await rawFile());
    rawDiskFileMs.push(await rawFileWithDisk(path));
    if (round % 2 === 1) oursFileMs.push(await oursFile(round, path));
    console.log(`round ${round}: ${fileRound()}`);
  }
  for (let round = 1; round <= ROUNDS && !ONLY_FILE; round++) {
    if (!relays) throw new Error('the relays did not start');
    // Relayed: the same raw pages through our TURN and through coturn, alternating which goes first.
    if (round % 2 === 0) relayCoturnMs.push(await rawFile(relays.coturn));
    relayOursMs.push(await rawFile(relays.ours));
    if (round % 2 === 1) relayCoturnMs.push(await rawFile(relays.coturn));
    if (round % 2 === 0) oursFileMs.push(await oursFile(round, path));
    rawFileMs.push(await rawFile());
    rawDiskFileMs.push(await rawFileWithDisk(path));
    if (round % 2 === 1) oursFileMs.push(await oursFile(round, path));
    if (round % 2 === 0) oursCallMs.push(await oursCall(100 + round));
    rawCallMs.push(await rawCall());
    if (round % 2 === 1) oursCallMs.push(await oursCall(100 + round));
    console.log(
      `round ${round}: ${fileRound()}; call ours ${oursCallMs.at(-1)} ms, raw ${rawCallMs.at(-1)} ms; ` +
        `relayed raw channel: our TURN ${relayOursMs.at(-1)} ms, coturn ${relayCoturnMs.at(-1)} ms`,
    );
  }
  const mbs = (ms: number) => FILE_BYTES / 1e6 / (ms / 1000);
  const result = {
    file_mb: FILE_MB,
    file_ours_mb_s: mbs(median(oursFileMs)),
    file_raw_mb_s: mbs(median(rawFileMs)),
    file_raw_disk_mb_s: mbs(median(rawDiskFileMs)),
    call_ours_ms: median(oursCallMs),
    call_raw_ms: median(rawCallMs),
    relay_ours_mb_s: mbs(median(relayOursMs)),
    relay_coturn_mb_s: mbs(median(relayCoturnMs)),
    file_cpu_s: { ours: median(fileCpuS.ours), raw: median(fileCpuS.raw), raw_disk: median(fileCpuS.rawDisk) },
    runs: { oursFileMs, rawFileMs, rawDiskFileMs, oursCallMs, rawCallMs, relayOursMs, relayCoturnMs, fileCpuS },
  };
  console.log(JSON.stringify(result));
  for (const v of [...oursFileMs, ...rawFileMs, ...rawDiskFileMs, ...oursCallMs, ...rawCallMs, ...relayOursMs, ...relayCoturnMs]) expect(v).toBeGreaterThan(0);
  if (process.env.BENCH_OUT) writeFileSync(process.env.BENCH_OUT, JSON.stringify(result));
});
