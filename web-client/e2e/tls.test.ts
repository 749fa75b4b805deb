// A micro-node on a LAN: `peerbubble up --tls` serves the web client, signaling (wss://) and the admin API over
// HTTPS with a self-signed certificate whose fingerprint it prints; members who open it by its LAN name (pi.lan,
// mapped to loopback in Chromium: an origin that is secure only over HTTPS) enroll and chat. The same page over
// plain HTTP says to use HTTPS instead of failing in the dark.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as netConnect } from 'node:net';
import { connect } from 'node:tls';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type Up, enroll, launch, newMember, open, screenshotDir, send, startUp, texts } from './harness';

let secure: Up;
let plain: Up;
let browser: Browser;

beforeAll(async () => {
  [secure, plain, browser] = await Promise.all([startUp(['--tls', '--tls-name', 'pi.lan']), startUp(), launch()]);
});

afterAll(async () => {
  await browser?.close();
  await Promise.all([secure?.stop(), plain?.stop()]);
});

/** `url` with its host replaced by pi.lan (same port). */
function onLan(url: string): string {
  const u = new URL(url);
  u.hostname = 'pi.lan';
  return u.toString();
}

test('up --tls serves the certificate whose fingerprint it prints, valid for the names it was made for', async () => {
  expect(secure.web).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  const at = secure.banner.findIndex((l) => l.includes('SHA-256 fingerprint'));
  expect(at).toBeGreaterThan(-1);
  const printed = secure.banner[at + 1]?.trim() ?? '';
  expect(printed).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  const port = Number(new URL(secure.web).port);
  // Clients that connect and say nothing (a slow-loris) hold up nobody: handshakes run on their own tasks.
  const silent = [0, 1, 2].map(() => netConnect({ host: '127.0.0.1', port }));
  const started = Date.now();
  // Verified against the kept certificate as the only trusted root, for the LAN name given with --tls-name.
  const served = await new Promise<string>((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, servername: 'pi.lan', ca: readFileSync(join(secure.data, 'tls', 'cert.pem')) }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.end();
    });
    socket.on('error', reject);
  });
  expect(served).toBe(printed);
  // Handshakes one after another would have waited out each silent client's 10 s limit.
  expect(Date.now() - started).toBeLessThan(5_000);
  for (const socket of silent) socket.destroy();
  // Nothing answers plain HTTP on the HTTPS port.
  await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
});

test('two members open the LAN address over HTTPS, enroll and chat through wss:// signaling', async () => {
  const [alice, bob] = [await newMember(browser, { https: true }), await newMember(browser, { https: true })];
  const sockets: string[] = [];
  alice.page.on('websocket', (ws) => sockets.push(ws.url()));
  await enroll(alice, onLan(secure.invites[0] ?? ''));
  await enroll(bob, onLan(secure.invites[1] ?? ''));
  expect(await alice.page.evaluate(() => window.isSecureContext)).toBe(true);
  expect(sockets.length).toBeGreaterThan(0);
  for (const url of sockets) expect(url).toMatch(/^wss:\/\/pi\.lan:\d+\/v1\/signal$/);
  await expect.poll(() => alice.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain('Bob (field team)');
  await open(alice.page, /Bob \(field team\)/);
  await send(alice.page, 'Generator two is back on');
  await open(bob.page, /Alice \(field team\)/);
  await expect.poll(() => texts(bob.page), { timeout: 60_000 }).toContain('Generator two is back on');
  await Promise.all([alice.context.close(), bob.context.close()]);
});

test('plain HTTP from another machine says to use HTTPS, in the member language, and stores nothing', async () => {
  for (const [locale, title, width] of [
    ['en-US', 'Open PeerBubble over HTTPS', 1280],
    ['fr-FR', 'Ouvrez PeerBubble en HTTPS', 390],
  ] as const) {
    const m = await newMember(browser, { locale, width, height: width > 500 ? 800 : 844 });
    const link = onLan(plain.invites[2] ?? '');
    expect(link).toMatch(/^http:\/\/pi\.lan:/);
    await m.page.goto(link);
    await m.page.getByRole('heading', { name: title }).waitFor();
    const https = await m.page.getByRole('link').first().getAttribute('href');
    expect(https).toBe(link.replace(/^http:/, 'https:'));
    expect(await m.page.evaluate(async () => (await indexedDB.databases()).length)).toBe(0);
    await m.page.screenshot({ path: join(screenshotDir(), `insecure-${width > 500 ? 'desktop' : 'phone'}-${locale.slice(0, 2)}.png`) });
    await m.context.close();
  }
});
