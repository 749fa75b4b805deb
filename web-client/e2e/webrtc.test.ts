// DataChannels from the browser: a member in Chromium and `peerbubble chat --echo` (webrtc-rs) talk over a
// direct DataChannel once it opens, and call each other (the echo sends every track back); a member who chose "always through the bubble's relay" reaches a contact
// through the bubble's own TURN (iceTransportPolicy "relay"), and getStats() says the selected pair is relayed.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, expect, onTestFailed, test } from 'vitest';
import { FAKE_MEDIA, type Up, enroll, invite, launch, newMember, open, screenshotDir, send, startUp, texts } from './harness';

let up: Up;
let browser: Browser;
let bot: ChildProcess | undefined;
const keys = mkdtempSync(join(tmpdir(), 'peerbubble-e2e-keys-'));

beforeAll(async () => {
  // Members' candidates are loopback addresses here: the relay may send to them only because this says so.
  [up, browser] = await Promise.all([startUp(['--turn-allow-peer', '127.0.0.0/8']), launch(FAKE_MEDIA)]);
});

afterAll(async () => {
  bot?.kill('SIGTERM');
  await browser?.close();
  await up?.stop();
  rmSync(keys, { recursive: true, force: true });
});

/** The connection badge in the open conversation's header. */
function badge(page: import('playwright-core').Page): Promise<string> {
  return page.locator('.pane-head .tag.link').innerText();
}

/** Frames decoded of the call's first incoming video, and bytes of its incoming audio. */
async function received(page: Page): Promise<{ frames: number; audio: number }> {
  const stats = await page.evaluate(() =>
    (
      window as unknown as { peerbubbleDiagnostics: { callStats: () => Promise<{ videoFrames: number[]; inbound: Record<string, { bytes: number }> } | null> } }
    ).peerbubbleDiagnostics.callStats(),
  );
  return { frames: stats?.videoFrames[0] ?? 0, audio: stats?.inbound.audio?.bytes ?? 0 };
}

/** Candidates the page trickled to its contacts, and received from them. */
function trickled(m: { page: Page }): Promise<{ sent: number; received: number }> {
  return m.page.evaluate(() =>
    (window as unknown as { peerbubbleDiagnostics: { trickled: () => { sent: number; received: number } } }).peerbubbleDiagnostics.trickled(),
  );
}

/** Frames of type `send` (relayed envelopes) the page has sent so far. */
function relayed(sent: string[]): number {
  return sent.filter((f) => f.includes('"type":"send"')).length;
}

test('a browser member and peerbubble chat --echo talk over a DataChannel', async () => {
  const bin = process.env.PEERBUBBLE_BIN ?? '';
  const key = join(keys, 'echo.key');
  execFileSync(bin, ['enroll', '--api', up.api, '--invite', await invite(up, 'Echo bot', ['field-team']), '--key-out', key]);
  bot = spawn(bin, ['chat', '--echo', '--rtc-bind', '127.0.0.1:0', '--url', up.signal, '--key', key], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const botLog: string[] = [];
  bot.stdout?.on('data', (d: Buffer) => botLog.push(d.toString()));
  bot.stderr?.on('data', (d: Buffer) => botLog.push(d.toString()));
  onTestFailed(() => console.log(`peerbubble chat --echo said:\n${botLog.join('')}`));

  const alice = await newMember(browser);
  await enroll(alice, up.invites[0] ?? '');
  await expect.poll(() => alice.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain('Echo bot');
  await open(alice.page, /Echo bot/);
  await send(alice.page, 'radio check one');
  await expect.poll(() => texts(alice.page), { timeout: 60_000 }).toContain('echo: radio check one');
  await expect.poll(() => badge(alice.page), { timeout: 60_000 }).toBe('Direct connection');
  // From now on envelopes take the channel: nothing more is relayed through signaling for this message.
  const before = relayed(alice.sent);
  await send(alice.page, 'radio check two');
  await expect.poll(() => texts(alice.page), { timeout: 30_000 }).toContain('echo: radio check two');
  expect(relayed(alice.sent)).toBe(before);
  // The channel's bytes go between the channel and the worker: the page handed the channel over.
  const inWorker = () =>
    alice.page.evaluate(() => (window as unknown as { peerbubbleDiagnostics: { channelsInWorker: () => number } }).peerbubbleDiagnostics.channelsInWorker());
  expect(await inWorker()).toBe(1);
  await alice.page.screenshot({ path: join(screenshotDir(), 'chat-direct-desktop-en.png') });
  // A video call: the echo (webrtc-rs) picks up and sends every track back; the browser decodes its own
  // camera and hears its own microphone, echoed, with frames and bytes rising.
  await alice.page.getByRole('button', { name: 'Video call' }).click();
  await expect.poll(() => alice.page.locator('.call-status').innerText(), { timeout: 30_000 }).toContain('In call with Echo bot');
  await expect.poll(async () => (await received(alice.page)).frames, { timeout: 60_000 }).toBeGreaterThan(0);
  for (const pick of [(r: { frames: number }) => r.frames, (r: { audio: number }) => r.audio]) {
    const before = pick(await received(alice.page));
    await expect.poll(async () => pick(await received(alice.page)), { timeout: 20_000 }).toBeGreaterThan(before);
  }
  await alice.page.screenshot({ path: join(screenshotDir(), 'call-echo-desktop-en.png') });
  await alice.page.getByRole('button', { name: 'Hang up' }).click();
  await expect.poll(() => alice.page.locator('.call-screen').count()).toBe(0);
  // The chat goes on over the same connection after the call.
  await send(alice.page, 'radio check three');
  await expect.poll(() => texts(alice.page), { timeout: 30_000 }).toContain('echo: radio check three');
  // The SDP (addresses, fingerprints) crossed signaling only inside MLS.
  expect(alice.frames.join('\n')).not.toMatch(/a=fingerprint|a=candidate|127\.0\.0\.1 \d+ typ/);
  await alice.context.close();
});

test('relay only: the channel opens through the bubble TURN and getStats shows a relayed pair', async () => {
  const [carol, dan] = [await newMember(browser), await newMember(browser, { locale: 'fr-FR', width: 390, height: 844 })];
  await enroll(carol, await invite(up, 'Carol (field team)', ['field-team']));
  await carol.page.getByLabel("Always go through the bubble's relay").check();
  await enroll(dan, await invite(up, 'Dan (field team)', ['field-team']));
  await expect.poll(() => carol.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain('Dan (field team)');
  await open(carol.page, /Dan \(field team\)/);
  await send(carol.page, 'Switching to relay');
  await expect.poll(() => badge(carol.page), { timeout: 60_000 }).toBe("Through the bubble's relay");
  await open(dan.page, /Carol \(field team\)/);
  await expect.poll(() => badge(dan.page), { timeout: 30_000 }).toBe('Par le relais de la bulle');
  await dan.page.screenshot({ path: join(screenshotDir(), 'chat-relayed-phone-fr.png') });
  const before = relayed(dan.sent);
  await send(dan.page, 'Bien reçu par le relais');
  await expect.poll(() => texts(carol.page), { timeout: 30_000 }).toContain('Bien reçu par le relais');
  expect(relayed(dan.sent)).toBe(before);
  // Dan answered as soon as he had an answer: the candidates he gathered afterwards (his TURN allocation at
  // least) followed it, each inside MLS, and Carol got every one.
  const sent = (await trickled(dan)).sent;
  expect(sent).toBeGreaterThan(0);
  await expect.poll(async () => (await trickled(carol)).received, { timeout: 10_000 }).toBe(sent);
  expect([...carol.frames, ...dan.frames].join('\n')).not.toMatch(/candidate:|a=fingerprint| typ (host|relay|srflx)/);
  await Promise.all([carol.context.close(), dan.context.close()]);
});
