// What the server sends the browser: the security headers on every response, no inline script, Subresource
// Integrity on every tag, and a manifest whose hashes are those of the files served.
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type Up, startUp } from './harness';

let up: Up;
beforeAll(async () => {
  up = await startUp();
});
afterAll(async () => {
  await up?.stop();
});

const CSP = "script-src 'self' 'wasm-unsafe-eval'";

test('every response carries the CSP; the page has no inline script or style and SRI on every tag', async () => {
  for (const path of ['/', '/enroll', '/web-manifest.json', '/healthz', '/api/v1/openapi.json', '/no-such-file']) {
    const response = await fetch(`${up.web}${path}`);
    const csp = response.headers.get('content-security-policy') ?? '';
    expect(csp, path).toContain(CSP);
    expect(csp, path).not.toContain('unsafe-inline');
    expect(csp, path).toContain("default-src 'none'");
    expect(response.headers.get('x-content-type-options'), path).toBe('nosniff');
  }
  const html = await (await fetch(`${up.web}/`)).text();
  const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/g)];
  expect(scripts.length).toBeGreaterThan(0);
  for (const [, attrs, body] of scripts) {
    expect(body?.trim(), 'inline script').toBe('');
    expect(attrs).toMatch(/\bsrc="\/assets\/[^"]+\.js"/);
    expect(attrs).toMatch(/\bintegrity="sha384-[A-Za-z0-9+/=]+"/);
  }
  expect(html).not.toMatch(/<style\b/);
  expect(html).not.toMatch(/\sstyle="/);
  for (const [tag] of html.matchAll(/<link\b[^>]*rel="(?:stylesheet|modulepreload)"[^>]*>/g)) {
    expect(tag).toMatch(/\bintegrity="sha384-/);
  }
});

test('the SRI hashes and the manifest match the bytes served', async () => {
  const html = await (await fetch(`${up.web}/`)).text();
  for (const [, file, sri] of html.matchAll(/(?:src|href)="(\/assets\/[^"]+)" integrity="(sha384-[^"]+)"/g)) {
    const bytes = Buffer.from(await (await fetch(`${up.web}${file}`)).arrayBuffer());
    expect(`sha384-${createHash('sha384').update(bytes).digest('base64')}`, file).toBe(sri);
  }
  const manifest = (await (await fetch(`${up.web}/web-manifest.json`)).json()) as { algorithm: string; files: Record<string, string> };
  expect(manifest.algorithm).toBe('sha256');
  const files = Object.entries(manifest.files);
  expect(files.some(([path]) => path.endsWith('.wasm'))).toBe(true);
  expect(files.some(([path]) => path === '/index.html')).toBe(true);
  for (const [path, sha256] of files) {
    const response = await fetch(`${up.web}${path}`);
    expect(response.status, path).toBe(200);
    const bytes = Buffer.from(await response.arrayBuffer());
    expect(createHash('sha256').update(bytes).digest('hex'), path).toBe(sha256);
    if (path.endsWith('.wasm')) expect(response.headers.get('content-type')).toBe('application/wasm');
  }
});
