// Audio and video calls between two members in Chromium (fake camera and microphone), against a real
// `peerbubble up`: the callee sees who calls and whether their key was verified, accepts, and on both pages
// getStats() shows inbound audio and video with bytes and decoded frames rising over a succeeded candidate pair;
// muting stops outbound audio bytes; hanging up ends the tracks and says so on the other side; a declined call
// says so; a bubble whose rules forbid calls offers no call button. Call set-up never crosses signaling in clear.
import { join } from 'node:path';
import { type Browser, type Page, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CHROMIUM_ARGS, CHROMIUM_PATH, type Member, type Up, admin, createGroup, enroll, invite, newMember, open, screenshotDir, startUp, unlock } from './harness';

let up: Up;
let browser: Browser;
let alice: Member;
let bob: Member;

interface Stats {
  inbound: Record<string, { bytes: number; frames: number }>;
  outbound: Record<string, { bytes: number; frames: number }>;
  videoFrames: number[];
  pair: string | null;
  relayed: boolean;
  remoteTracks: Array<{ kind: string; state: string }>;
  localTracks?: Array<{ kind: string; state: string; label: string }>;
}

beforeAll(async () => {
  [up, browser] = await Promise.all([
    startUp(),
    chromium.launch({
      executablePath: CHROMIUM_PATH,
      args: [...CHROMIUM_ARGS, '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required'],
    }),
  ]);
});

afterAll(async () => {
  await browser?.close();
  await up?.stop();
});

interface Diagnostics {
  callStats: (peer?: string) => Promise<Stats | null>;
  callOthers: () => string[];
}

function stats(page: Page, peer?: string): Promise<Stats | null> {
  return page.evaluate((p) => (window as unknown as { peerbubbleDiagnostics: Diagnostics }).peerbubbleDiagnostics.callStats(p), peer);
}

/** Who else is in this page's call (member ids). */
function others(page: Page): Promise<string[]> {
  return page.evaluate(() => (window as unknown as { peerbubbleDiagnostics: Diagnostics }).peerbubbleDiagnostics.callOthers());
}

async function rising(page: Page, pick: (s: Stats) => number, peer?: string): Promise<void> {
  const first = await stats(page, peer);
  expect(first).not.toBeNull();
  const before = first ? pick(first) : 0;
  await expect.poll(async () => {
    const now = await stats(page, peer);
    return now ? pick(now) : 0;
  }, { timeout: 20_000 }).toBeGreaterThan(before);
}

describe('calls', () => {
  test('two members with a direct link', async () => {
    alice = await newMember(browser);
    bob = await newMember(browser, { locale: 'fr-FR', width: 390, height: 844 });
    await enroll(alice, await invite(up, 'Alice (field team)', ['field-team']));
    await enroll(bob, await invite(up, 'Bob (field team)', ['field-team']));
    await expect.poll(() => alice.page.getByRole('navigation').innerText(), { timeout: 60_000 }).toContain('Bob (field team)');
    await open(alice.page, /Bob \(field team\)/);
    await expect.poll(() => alice.page.locator('.pane-head .tag.link').innerText(), { timeout: 60_000 }).toBe('Direct connection');
  });

  test('a video call: both decode the other, mute stops audio, hang-up ends it on both sides', async () => {
    await alice.page.getByRole('button', { name: 'Video call' }).click();
    const incoming = bob.page.getByRole('dialog', { name: 'Appel entrant' });
    await expect.poll(() => incoming.innerText(), { timeout: 30_000 }).toContain('Alice (field team) vous appelle (vidéo)');
    expect(await incoming.innerText()).toContain('Numéro de sécurité pas encore vérifié');
    await bob.page.screenshot({ path: join(screenshotDir(), 'call-incoming-phone-fr.png') });
    await incoming.getByRole('button', { name: 'Décrocher' }).click();
    await expect.poll(() => alice.page.locator('.call-status').innerText(), { timeout: 30_000 }).toContain('In call with Bob (field team)');
    await expect.poll(() => bob.page.locator('.call-status').innerText(), { timeout: 30_000 }).toContain('En appel avec Alice (field team)');
    for (const page of [alice.page, bob.page]) {
      await rising(page, (s) => s.inbound.video?.frames ?? 0);
      await rising(page, (s) => s.inbound.video?.bytes ?? 0);
      await rising(page, (s) => s.inbound.audio?.bytes ?? 0);
      expect((await stats(page))?.pair).toBe('succeeded');
    }
    await alice.page.screenshot({ path: join(screenshotDir(), 'call-active-desktop-en.png') });
    await bob.page.screenshot({ path: join(screenshotDir(), 'call-active-phone-fr.png') });
    // Bob shares his screen beside his camera: Alice decodes a second video.
    await bob.page.getByRole('button', { name: "Partager l'écran" }).click();
    await expect.poll(async () => (await stats(alice.page))?.videoFrames.length ?? 0, { timeout: 30_000 }).toBe(2);
    await rising(alice.page, (s) => s.videoFrames[1] ?? 0);
    await expect.poll(() => alice.page.getByLabel("Bob (field team)'s screen").count(), { timeout: 10_000 }).toBe(1);
    await alice.page.screenshot({ path: join(screenshotDir(), 'call-screen-share-desktop-en.png') });
    await bob.page.getByRole('button', { name: 'Arrêter le partage' }).click();
    // Mute: no more audio bytes leave Alice.
    await alice.page.getByRole('button', { name: 'Mute' }).click();
    await new Promise((r) => setTimeout(r, 1_000));
    const muted = (await stats(alice.page))?.outbound.audio?.bytes ?? 0;
    await new Promise((r) => setTimeout(r, 2_000));
    expect((await stats(alice.page))?.outbound.audio?.bytes ?? 0).toBe(muted);
    await rising(alice.page, (s) => s.outbound.video?.bytes ?? 0);
    await alice.page.getByRole('button', { name: 'Unmute' }).click();
    await rising(alice.page, (s) => s.outbound.audio?.bytes ?? 0);
    // Hang up: Bob is told, both call screens close, the tracks end.
    await alice.page.getByRole('button', { name: 'Hang up' }).click();
    await expect.poll(() => bob.page.locator('.call-ended').innerText(), { timeout: 30_000 }).toContain('Alice (field team) a raccroché');
    for (const page of [alice.page, bob.page]) {
      expect(await page.locator('.call-screen').count()).toBe(0);
      expect((await stats(page))?.remoteTracks ?? []).toEqual([]);
    }
    // Nothing of the set-up crossed signaling in clear.
    expect([...alice.frames, ...bob.frames].join('\n')).not.toMatch(/a=fingerprint|m=video|a=candidate/);
  });

  test('a declined call says so to the caller', async () => {
    await bob.page.getByRole('button', { name: 'Fermer' }).click();
    await alice.page.getByRole('button', { name: 'Call', exact: true }).click();
    await bob.page.getByRole('dialog', { name: 'Appel entrant' }).getByRole('button', { name: 'Refuser' }).click({ timeout: 30_000 });
    await expect.poll(() => alice.page.locator('.call-ended').innerText(), { timeout: 30_000 }).toContain('Bob (field team) declined the call');
  });

  test('the call ends and says so when the other side reloads its page', async () => {
    await alice.page.getByRole('button', { name: 'Close' }).click();
    await alice.page.getByRole('button', { name: 'Call', exact: true }).click();
    await bob.page.getByRole('dialog', { name: 'Appel entrant' }).getByRole('button', { name: 'Décrocher' }).click({ timeout: 30_000 });
    await expect.poll(() => alice.page.locator('.call-status').innerText(), { timeout: 30_000 }).toContain('In call with Bob (field team)');
    await bob.page.reload();
    await expect.poll(() => alice.page.locator('.call-ended').innerText(), { timeout: 60_000 }).toContain('the connection was lost');
    expect(await alice.page.locator('.call-screen').count()).toBe(0);
    await alice.page.screenshot({ path: join(screenshotDir(), 'call-lost-desktop-en.png') });
    await unlock(bob);
    await bob.page.getByRole('navigation').waitFor({ timeout: 60_000 });
  });

  test('a bubble whose rules forbid calls offers no call', async () => {
    await admin(up, 'PUT', '/api/v1/bubbles/demo/policy', { calls_allowed: false });
    await expect.poll(() => alice.page.getByRole('button', { name: 'Video call' }).count(), { timeout: 30_000 }).toBe(0);
    await admin(up, 'PUT', '/api/v1/bubbles/demo/policy', { calls_allowed: true });
  });

  test('switching the microphone during a call sends the new one, with nothing set up again', async () => {
    const call = alice.page.getByRole('button', { name: 'Call', exact: true });
    await expect.poll(() => call.isEnabled(), { timeout: 60_000 }).toBe(true);
    await call.click();
    await bob.page.getByRole('dialog', { name: 'Appel entrant' }).getByRole('button', { name: 'Décrocher' }).click({ timeout: 30_000 });
    await expect.poll(() => alice.page.locator('.call-status').innerText(), { timeout: 30_000 }).toContain('In call with Bob (field team)');
    await alice.page.getByText('Microphone and camera').click();
    const select = alice.page.getByRole('combobox', { name: 'Microphone' });
    const options = await select.locator('option').evaluateAll((os) => os.map((o) => (o as HTMLOptionElement).value));
    expect(options.length).toBeGreaterThan(1);
    const label = async () => (await stats(alice.page))?.localTracks?.find((t) => t.kind === 'audio')?.label;
    const before = await label();
    const current = await select.inputValue();
    await select.selectOption(options.find((o) => o !== current) ?? '');
    await expect.poll(label, { timeout: 10_000 }).not.toBe(before);
    await rising(alice.page, (s) => s.outbound.audio?.bytes ?? 0);
    await rising(bob.page, (s) => s.inbound.audio?.bytes ?? 0);
    await alice.page.screenshot({ path: join(screenshotDir(), 'call-devices-desktop-en.png') });
    await alice.page.getByRole('button', { name: 'Hang up' }).click();
    await expect.poll(() => bob.page.locator('.call-ended').innerText(), { timeout: 30_000 }).toContain('a raccroché');
    await bob.page.getByRole('button', { name: 'Fermer' }).click();
    await alice.page.getByRole('button', { name: 'Close' }).click();
  });

  test('relay only: the call goes through the bubble TURN (a relayed candidate pair)', async () => {
    await alice.page.getByLabel("Always go through the bubble's relay").check();
    await expect.poll(() => alice.page.locator('.pane-head .tag.link').innerText(), { timeout: 60_000 }).toBe("Through the bubble's relay");
    await alice.page.getByRole('button', { name: 'Video call' }).click();
    await bob.page.getByRole('dialog', { name: 'Appel entrant' }).getByRole('button', { name: 'Décrocher' }).click({ timeout: 30_000 });
    await expect.poll(() => alice.page.locator('.call-status').innerText(), { timeout: 30_000 }).toContain('In call with Bob (field team)');
    for (const page of [alice.page, bob.page]) {
      await rising(page, (s) => s.inbound.video?.frames ?? 0);
      const now = await stats(page);
      expect(now?.pair).toBe('succeeded');
      expect(now?.relayed).toBe(true);
    }
    await alice.page.getByRole('button', { name: 'Hang up' }).click();
    await expect.poll(() => bob.page.locator('.call-ended').count(), { timeout: 30_000 }).toBe(1);
    await bob.page.getByRole('button', { name: 'Fermer' }).click();
    await alice.page.getByRole('button', { name: 'Close' }).click();
    await alice.page.getByLabel("Always go through the bubble's relay").uncheck();
  });

  test('a group call of three (mesh): every page decodes both others; one leaves, the other two go on', async () => {
    const erin = await newMember(browser);
    await enroll(erin, await invite(up, 'Erin (field team)', ['field-team']));
    await expect.poll(() => alice.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain('Erin');
    await createGroup(alice.page, 'North sector', [/Bob/, /Erin/]);
    for (const m of [bob, erin]) {
      await expect.poll(() => m.page.getByRole('navigation').innerText(), { timeout: 60_000 }).toContain('North sector');
    }
    // Bob and Erin never talked: the call sets their pair's conversation and connection up by itself.
    const start = alice.page.getByRole('button', { name: 'Video call' });
    await expect.poll(() => start.isEnabled(), { timeout: 30_000 }).toBe(true);
    await start.click();
    const bobRing = bob.page.getByRole('dialog', { name: 'Appel entrant' });
    await expect.poll(() => bobRing.innerText(), { timeout: 30_000 }).toContain('Alice (field team) appelle North sector (vidéo)');
    await bob.page.screenshot({ path: join(screenshotDir(), 'call-group-incoming-phone-fr.png') });
    await bobRing.getByRole('button', { name: 'Rejoindre' }).click();
    await erin.page.getByRole('dialog', { name: 'Incoming call' }).getByRole('button', { name: 'Join' }).click({ timeout: 30_000 });
    for (const page of [alice.page, bob.page, erin.page]) {
      await expect.poll(() => others(page), { timeout: 30_000 }).toHaveLength(2);
      for (const peer of await others(page)) {
        await expect.poll(async () => (await stats(page, peer))?.inbound.video?.frames ?? 0, { timeout: 60_000 }).toBeGreaterThan(0);
        await rising(page, (s) => s.inbound.video?.frames ?? 0, peer);
        await rising(page, (s) => s.inbound.audio?.bytes ?? 0, peer);
      }
    }
    await expect.poll(() => alice.page.locator('.call-status').innerText()).toContain('North sector · 3 in the call');
    await alice.page.screenshot({ path: join(screenshotDir(), 'call-group-desktop-en.png') });
    await bob.page.screenshot({ path: join(screenshotDir(), 'call-group-phone-fr.png') });
    // Erin leaves: Alice and Bob go on with each other.
    await erin.page.getByRole('button', { name: 'Leave call' }).click();
    await expect.poll(() => erin.page.locator('.call-screen').count()).toBe(0);
    await expect.poll(() => erin.page.locator('.call-ended').innerText()).toContain('You left the call in North sector');
    for (const page of [alice.page, bob.page]) {
      await expect.poll(() => others(page), { timeout: 30_000 }).toHaveLength(1);
      const [peer] = await others(page);
      await rising(page, (s) => s.inbound.video?.frames ?? 0, peer);
    }
    await expect.poll(() => alice.page.locator('.call-status').innerText()).toContain('North sector · 2 in the call');
    // Erin can join again from the group while it goes on.
    await open(erin.page, /North sector/);
    await erin.page.getByRole('button', { name: /Join call \(2 in it\)/ }).click({ timeout: 30_000 });
    await expect.poll(() => others(erin.page), { timeout: 30_000 }).toHaveLength(2);
    await erin.page.getByRole('button', { name: 'Leave call' }).click();
    // The last two: when Alice leaves, Bob is told everyone else left.
    await expect.poll(() => others(alice.page), { timeout: 30_000 }).toHaveLength(1);
    await alice.page.getByRole('button', { name: 'Leave call' }).click();
    await expect.poll(() => bob.page.locator('.call-ended').innerText(), { timeout: 30_000 }).toContain("Tous les autres ont quitté l'appel de North sector");
    await expect.poll(() => bob.page.locator('.call-screen').count()).toBe(0);
    expect([...alice.frames, ...bob.frames, ...erin.frames].join('\n')).not.toMatch(/a=fingerprint|m=video|a=candidate/);
    await erin.context.close();
  });
});
