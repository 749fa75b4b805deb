// The console shows what the platform running a bubble reports (issue 18): in a cluster, the Bubble resource's
// conditions and its signaling endpoint come back through the admin API (`platform` of each bubble), and an
// administrator must see at once whether the bubble runs and, if not, which part waits and why.
//
// No Kubernetes API server runs here, so nothing real fills `platform` (control-k8s's tests cover the path from a
// scripted API server to the admin API's answer). This test runs the console against a real `peerbubble up`,
// which reports none (checked first: nothing is shown), then adds to the admin API's real answer, in the browser,
// what a cluster-backed admin API answers, and looks at it in English and French, at desktop and phone width.
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { Browser } from 'playwright-core';
import { type Member, type Up, launch, newMember, shot, startUp } from './harness';

let up: Up;
let browser: Browser;
const members: Member[] = [];

beforeAll(async () => {
  up = await startUp();
  browser = await launch();
});

afterAll(async () => {
  for (const m of members) await m.context.close();
  await browser?.close();
  await up?.stop();
});

const NOT_READY = {
  ready: false,
  conditions: [
    { type: 'Ready', status: false, reason: 'PartsNotReady', message: '2 of 4 parts are ready' },
    { type: 'SignalingReady', status: true, reason: 'Available', message: '2 of 2 signaling pods ready' },
    { type: 'TurnReady', status: false, reason: 'WaitingForReplicas', message: '1 of 2 TURN pods ready' },
    { type: 'PolicyApplied', status: false, reason: 'SecretMissing', message: 'Secret cell-7-turn not found' },
  ],
  signaling: 'wss://cell-7.bubbles.example.org/v1/signal',
};
const READY = {
  ready: true,
  conditions: NOT_READY.conditions.map((c) => ({ ...c, status: true, reason: 'Available', message: 'ok' })),
  signaling: NOT_READY.signaling,
};

/** Adds `platform` to every bubble of the admin API's real answer, as an admin API in a cluster fills it. */
async function asInACluster(page: Page, platform: () => unknown): Promise<void> {
  await page.route(/\/api\/v1\/bubbles$/, async (route) => {
    const response = await route.fetch();
    const bubbles = (await response.json()) as Record<string, unknown>[];
    for (const b of bubbles) b.platform = platform();
    await route.fulfill({ response, json: bubbles });
  });
}

async function signIn(page: Page): Promise<void> {
  await page.goto(`${up.web}/admin/`);
  await page.getByLabel(/Admin or API token|Jeton d'administration/).fill(up.token);
  await page.getByRole('button', { name: /Sign in with this token|Se connecter avec ce jeton/ }).click();
  await page.getByRole('heading', { name: /^(Bubbles|Bulles)$/ }).waitFor();
}

async function user(locale: string, width = 1280, height = 860): Promise<Page> {
  const m = await newMember(browser, { locale, width, height });
  members.push(m);
  return m.page;
}

describe('the platform status of a bubble in the console', () => {
  test('a micro-node reports none, and nothing is shown', async () => {
    const page = await user('en-US');
    await signIn(page);
    await page.locator('.card.bubble').first().waitFor();
    expect(await page.locator('.platform').count()).toBe(0);
  });

  test('in a cluster: what is not ready, in the platform\'s words, then running', async () => {
    const page = await user('en-US');
    let platform: unknown = NOT_READY;
    await asInACluster(page, () => platform);
    await signIn(page);
    const card = page.locator('.card.bubble').first();
    const note = card.locator('.platform');
    await note.waitFor();
    await expect.poll(() => note.innerText()).toContain('Not ready yet');
    const items = await note.locator('li').allInnerTexts();
    expect(items).toEqual(['TURN relay — 1 of 2 TURN pods ready', 'Network rules — Secret cell-7-turn not found']);
    expect(await note.innerText()).toContain('wss://cell-7.bubbles.example.org/v1/signal');
    await shot(page, 'console-platform-not-ready-en-desktop');

    // The bubble's own page says the same.
    await card.getByRole('link').first().click();
    await page.locator('.platform').waitFor();
    expect(await page.locator('.platform li').allInnerTexts()).toEqual(items);

    platform = READY;
    await page.goto(`${up.web}/admin/`);
    await expect.poll(() => page.locator('.card.bubble .platform').first().innerText()).toContain('Running');
    expect(await page.locator('.card.bubble .platform li').count()).toBe(0);
    await shot(page, 'console-platform-ready-en-desktop');
  });

  test('in French, at phone width, nothing sticks out', async () => {
    const page = await user('fr-FR', 390, 844);
    await asInACluster(page, () => NOT_READY);
    await signIn(page);
    const note = page.locator('.card.bubble .platform').first();
    await note.waitFor();
    await expect.poll(() => note.innerText()).toContain('Pas encore prête');
    expect(await note.locator('li').allInnerTexts()).toEqual([
      'Relais TURN — 1 of 2 TURN pods ready',
      'Règles réseau — Secret cell-7-turn not found',
    ]);
    const wide = await page.evaluate(() => {
      const width = document.documentElement.clientWidth;
      return Array.from(document.querySelectorAll('.platform *'))
        .filter((el) => el.getBoundingClientRect().right > width + 1)
        .map((el) => el.tagName);
    });
    expect(wide).toEqual([]);
    await shot(page, 'console-platform-not-ready-fr-phone');
    const desktop = await user('fr-FR');
    await asInACluster(desktop, () => NOT_READY);
    await signIn(desktop);
    await desktop.locator('.card.bubble .platform').first().waitFor();
    await shot(desktop, 'console-platform-not-ready-fr-desktop');
    const phone = await user('en-US', 390, 844);
    await asInACluster(phone, () => NOT_READY);
    await signIn(phone);
    await phone.locator('.card.bubble .platform').first().waitFor();
    await shot(phone, 'console-platform-not-ready-en-phone');
  });
});
