// What a 16 KiB file chunk costs to encrypt in a Chromium worker: our ChaCha20-Poly1305 in wasm (the web client's
// `benchFileChunks`, through the real transfer state machines) against AES-256-GCM through WebCrypto (the browser's
// own AES-NI code, 64 calls in flight), and a loop that only copies the chunk and resolves a promise (what any
// asynchronous call costs at least). CPU seconds are every Chromium process's, from /proc, so WebCrypto's hop to the
// browser's crypto thread is counted. Run from web-client/ after `cargo xtask web`:
//   node bench/webcrypto-cost.mjs
// ADR 0021 (amended 2026-12-07, evening) and BENCHMARKS.md cite it.
import { readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const N = 8192;
const WASM = join(import.meta.dirname, '../src/wasm');

/** CPU seconds so far of every Chromium process. */
function chromiumCpu() {
  let total = 0;
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('chrom')) continue;
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      total += (Number(fields[11]) + Number(fields[12])) / 100;
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

const server = createServer((req, res) => {
  const name = (req.url ?? '/').slice(1);
  if (name === 'peerbubble_client_wasm.js' || name === 'peerbubble_client_wasm_bg.wasm') {
    const type = name.endsWith('.js') ? 'text/javascript' : 'application/wasm';
    return res.writeHead(200, { 'content-type': type }).end(readFileSync(join(WASM, name)));
  }
  res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>webcrypto cost</title>');
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage();
await page.goto(`${origin}/`);

/** Runs `body` (the worker's async code, ending in `postMessage(result)`) in a fresh module worker. */
async function inWorker(body) {
  return page.evaluate(
    (code) =>
      new Promise((resolve, reject) => {
        const worker = new Worker(URL.createObjectURL(new Blob([code], { type: 'text/javascript' })), { type: 'module' });
        worker.onmessage = (e) => {
          worker.terminate();
          resolve(e.data);
        };
        worker.onerror = (e) => reject(new Error(e.message));
      }),
    body,
  );
}

const loop = (call) => `
  const key = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt']);
  const chunk = new Uint8Array(16 * 1024 - 37);
  crypto.getRandomValues(chunk);
  const inflight = [];
  for (let i = 0; i < ${N}; i++) {
    const iv = new Uint8Array(12);
    new DataView(iv.buffer).setUint32(8, i);
    inflight.push(${call});
    if (inflight.length >= 64) await inflight.shift();
  }
  await Promise.all(inflight);
  postMessage(0);`;
const cases = {
  'copy and promise only': loop('Promise.resolve(chunk.slice())'),
  'AES-256-GCM (WebCrypto)': loop("crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: iv }, key, chunk)"),
  'wasm benchFileChunks (per chunk: the file hashed, sealed, opened and hashed, SHA-256 again)': `
    const wasm = await import('${origin}/peerbubble_client_wasm.js');
    await wasm.default({ module_or_path: '${origin}/peerbubble_client_wasm_bg.wasm' });
    postMessage(wasm.benchFileChunks(${N}));`,
};
for (let round = 1; round <= 2; round++) {
  for (const [name, body] of Object.entries(cases)) {
    const before = chromiumCpu();
    const result = await inWorker(body);
    const us = ((chromiumCpu() - before) / N) * 1e6;
    const wasm = typeof result === 'string' ? JSON.parse(result) : null;
    const detail = wasm
      ? ` (timed inside: seal ${wasm.seal.toFixed(1)} µs, open and hash ${wasm.open.toFixed(1)} µs, SHA-256 ${wasm.sha256.toFixed(1)} µs)`
      : '';
    console.log(`round ${round}: ${name}: ${us.toFixed(1)} µs of Chromium CPU per 16 KiB chunk${detail}`);
  }
}
await browser.close();
server.close();
