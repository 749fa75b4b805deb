// `cargo xtask bench browser`, the browser half (xtask adds the native figure and prints the last line).
// In one Chromium, against one real `peerbubble up`:
// - wasm_msg_us: client-core's MLS message cost (1 KiB text, encrypt + decrypt, receipts included) compiled to
//   the WebAssembly module the web client ships, run on a page (`benchMessages`);
// - connect: from clicking a contact in the web client (MLS conversation set-up included) to its DataChannel
//   being open with the certificate checked (the header says "Direct connection"), against a raw page that
//   authenticates to the same signaling and opens a DataChannel with nothing else (`raw-page.js`), rounds
//   alternating which goes first;
// - wasm_gz_kb: the shipped wasm, gzipped.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type Up, enroll, invite, launch, newMember, open, startUp } from '../e2e/harness';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 300);
const WASM_DIR = new URL('../src/wasm/', import.meta.url).pathname;
const keys = mkdtempSync(join(tmpdir(), 'peerbubble-bench-keys-'));

let up: Up;
let browser: Browser;

beforeAll(async () => {
  [up, browser] = await Promise.all([startUp(), launch(), servePages()]);
});

afterAll(async () => {
  await browser?.close();
  await up?.stop();
  pageServer?.close();
  rmSync(keys, { recursive: true, force: true });
});

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

/**
 * A blank page on a loopback origin of the test's own (a secure context in the same address space as the
 * bubble, which Chromium's local-network checks require: a page it did not fetch from an address may not reach
 * loopback), serving the wasm module the web client ships.
 */
async function blankPage(): Promise<Page> {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${pages}/index.html`);
  return page;
}

let pages = '';
let pageServer: Server | undefined;

async function servePages(): Promise<void> {
  pageServer = createServer((request, response) => {
    const file = new URL(request.url ?? '/', 'http://x').pathname.slice(1);
    if (file === 'index.html') {
      response.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>bench</title>');
    } else if (/^[\w.-]+\.(js|wasm)$/.test(file)) {
      const type = file.endsWith('.wasm') ? 'application/wasm' : 'text/javascript';
      response.writeHead(200, { 'content-type': type }).end(readFileSync(join(WASM_DIR, file)));
    } else {
      response.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => pageServer?.listen(0, '127.0.0.1', resolve));
  const address = pageServer.address() as AddressInfo;
  pages = `http://127.0.0.1:${address.port}`;
}

/** One round of the web client: two members who see each other; Alice opens Bob. */
async function ours(round: number): Promise<number> {
  const [alice, bob] = [await newMember(browser), await newMember(browser)];
  // BENCH_TRACE=1: every signaling frame of both members with its time, printed after the round, to see where the
  // time goes (in a client, between a frame received and the next sent; in the server, between sent and received).
  const trace: Array<[number, string]> = [];
  if (process.env.BENCH_TRACE) {
    for (const [who, m] of [['alice', alice], ['bob', bob]] as const) {
      m.page.on('websocket', (ws) => {
        const line = (dir: string, payload: string | Buffer) => {
          const text = String(payload);
          const type = /"type":"([a-z_]+)"/.exec(text)?.[1] ?? '?';
          trace.push([Date.now(), `${who} ${dir} ${type} ${text.length}B`]);
        };
        ws.on('framesent', (f) => line('>', f.payload));
        ws.on('framereceived', (f) => line('<', f.payload));
      });
    }
  }
  const bobName = `Bob ${round} (bench)`;
  await enroll(alice, await invite(up, `Alice ${round} (bench)`, ['field-team']));
  await enroll(bob, await invite(up, bobName, ['field-team']));
  await expect.poll(() => alice.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain(bobName);
  // Bob's page is online (its key store opened, its socket authenticated), as both raw pages are before their
  // clock starts: measured otherwise, the round includes Bob's own start (up to a second here).
  await alice.page.waitForFunction(
    (name) => Array.from(document.querySelectorAll('nav button')).some((b) => b.textContent?.includes(name) && b.querySelector('.presence.on')),
    bobName,
    { timeout: 30_000 },
  );
  // Both ends of the round are taken on the page: the click as it reaches the document, the header as it changes
  // (Playwright's own click — it waits for the button to be stable over two frames — is not the product's time).
  await alice.page.evaluate(() => {
    const w = window as unknown as BenchWindow;
    document.addEventListener('click', () => (w.benchClickAt ??= performance.now()), { capture: true, once: true });
    new MutationObserver((_, observer) => {
      if (document.querySelector('.pane-head .tag.link')?.textContent !== 'Direct connection') return;
      w.benchDirectAt = performance.now();
      observer.disconnect();
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  const started = Date.now();
  await open(alice.page, bobName);
  await alice.page.waitForFunction(() => (window as unknown as BenchWindow).benchDirectAt !== undefined, null, { timeout: 60_000 });
  const ms = await alice.page.evaluate(() => {
    const w = window as unknown as BenchWindow;
    return Math.round((w.benchDirectAt ?? NaN) - (w.benchClickAt ?? NaN));
  });
  if (process.env.BENCH_TRACE) {
    for (const [at, what] of trace) if (at >= started - 50) console.log(`  +${String(at - started).padStart(5)} ms ${what}`);
    console.log(`  +${String(ms).padStart(5)} ms alice: "Direct connection"`);
  }
  await Promise.all([alice.context.close(), bob.context.close()]);
  return ms;
}

/** One round of the baseline: two members enrolled from the terminal, two raw pages on the same signaling. */
async function raw(round: number): Promise<number> {
  const bin = process.env.PEERBUBBLE_BIN ?? '';
  const script = readFileSync(new URL('./raw-page.js', import.meta.url), 'utf8');
  const seeds: string[] = [];
  for (const name of [`Raw A ${round}`, `Raw B ${round}`]) {
    const key = join(keys, `${name.replace(/ /g, '-')}.key`);
    execFileSync(bin, ['enroll', '--api', up.api, '--invite', await invite(up, name, ['field-team']), '--key-out', key]);
    seeds.push(readFileSync(key, 'utf8'));
  }
  const pages = [await blankPage(), await blankPage()];
  const members: string[] = [];
  for (const [i, page] of pages.entries()) {
    await page.evaluate(script);
    // The server may not know a key enrolled a moment ago (it follows the admin API every second).
    for (let attempt = 1; ; attempt++) {
      try {
        members[i] = await page.evaluate(([url, seed]) => (window as unknown as RawWindow).raw.connect(url, seed), [up.signal, seeds[i] ?? ''] as const);
        break;
      } catch (err) {
        if (attempt >= 10) throw err;
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  }
  const [a, b] = pages as [Page, Page];
  // Timed on the page, as the web client's round.
  const ms = await a.evaluate(async (peer) => {
    const started = performance.now();
    await (window as unknown as RawWindow).raw.call(peer);
    return Math.round(performance.now() - started);
  }, members[1] ?? '');
  await Promise.all([a.context().close(), b.context().close()]);
  return ms;
}

/** What the web client's round notes on Alice's page. */
interface BenchWindow {
  benchClickAt?: number;
  benchDirectAt?: number;
}

interface RawWindow {
  raw: { connect: (url: string, seed: string) => Promise<string>; call: (peer: string) => Promise<void> };
}

test('bench browser', async () => {
  const page = await blankPage();
  const js = readdirSync(WASM_DIR).find((f) => f.endsWith('.js'));
  const wasm = readdirSync(WASM_DIR).find((f) => f.endsWith('.wasm'));
  expect(js && wasm).toBeTruthy();
  // A string, not a function: the bundler must not rewrite the page's dynamic import.
  const cost = (n: number) =>
    page.evaluate(`(async () => {
      const m = await import('/${js}');
      await m.default({ module_or_path: '/${wasm}' });
      return m.benchMessages(${n}, 1024);
    })()`) as Promise<number>;
  // Warm-up: the engine compiles hot functions with its optimising tier only after they ran a while.
  await cost(MESSAGES);
  await cost(MESSAGES);
  const wasmRuns: number[] = [];
  for (let i = 0; i < 5; i++) wasmRuns.push(await cost(MESSAGES));
  // A file transfer's chunk work in the same module (16 KiB chunks through the real state machines).
  const chunks = (n: number) =>
    page.evaluate(`(async () => {
      const m = await import('/${js}');
      await m.default({ module_or_path: '/${wasm}' });
      return JSON.parse(m.benchFileChunks(${n}));
    })()`) as Promise<{ seal: number; open: number; sha256: number }>;
  await chunks(2048);
  const chunkRuns: Array<{ seal: number; open: number; sha256: number }> = [];
  for (let i = 0; i < 3; i++) chunkRuns.push(await chunks(4096));
  await page.context().close();

  const oursMs: number[] = [];
  const rawMs: number[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    // Alternate which goes first, so that neither always meets a warmer machine.
    if (round % 2 === 0) oursMs.push(await ours(round));
    rawMs.push(await raw(round));
    if (round % 2 === 1) oursMs.push(await ours(round));
    console.log(`round ${round}: ours ${oursMs.at(-1)} ms, raw ${rawMs.at(-1)} ms`);
  }
  const wasmGzKb = gzipSync(readFileSync(join(WASM_DIR, wasm ?? ''))).length / 1024;
  const result = {
    wasm_msg_us: median(wasmRuns),
    wasm_chunk_seal_us: median(chunkRuns.map((c) => c.seal)),
    wasm_chunk_open_us: median(chunkRuns.map((c) => c.open)),
    wasm_chunk_sha256_us: median(chunkRuns.map((c) => c.sha256)),
    ours_median_ms: median(oursMs),
    raw_median_ms: median(rawMs),
    wasm_gz_kb: wasmGzKb,
    wasm_runs_us: wasmRuns,
    ours_ms: oursMs,
    raw_ms: rawMs,
  };
  console.log(JSON.stringify(result));
  for (const v of [...wasmRuns, ...oursMs, ...rawMs]) expect(v).toBeGreaterThan(0);
  if (process.env.BENCH_OUT) writeFileSync(process.env.BENCH_OUT, JSON.stringify(result));
});
