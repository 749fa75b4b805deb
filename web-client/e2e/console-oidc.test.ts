// Administrators sign in to the console through a real OpenID Connect provider, in Chromium: the loopback
// provider of the admin-api tests (npm `oidc-provider`, crates/admin-api/tests/oidc) and a real `peerbubble up`
// configured with it. An administrator lands on the Bubbles page with her role; an auditor sees the read-only
// banner; an account without a PeerBubble role, and a provider whose ID tokens are wrong, are sent back to the
// sign-in page, which says why (English and French) and holds no session. axe-core on the sign-in page.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import AxeBuilder from '@axe-core/playwright';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type Member, type Up, launch, newMember, screenshotDir, startUp } from './harness';

/** The console's own messages, as the people it serves read them. */
interface Messages {
  signIn: { oidc: string; providerError: Record<string, string> };
}
function messages(lang: 'en' | 'fr'): Messages {
  return JSON.parse(readFileSync(new URL(`../../web-admin/src/locales/${lang}.json`, import.meta.url), 'utf8')) as Messages;
}
const en = messages('en');
const fr = messages('fr');

const PROVIDER_DIR = new URL('../../crates/admin-api/tests/oidc/', import.meta.url).pathname;
const CLIENT_ID = 'peerbubble-admin';
const CLIENT_SECRET = 'e2e-console-oidc-secret_0123456789';
const ACCOUNTS = { alice: ['admin'], ann: ['auditor'], nobody: [] };

let up: Up;
let browser: Browser;
let provider: ChildProcess | undefined;
const providerLog: string[] = [];
/** The provider's issuer, `http://127.0.0.1:<port>`. */
let issuer: string;
/** The admin API's address, where the provider sends the browser back and where the console is served too. */
let adminUrl: string;
/** Alice's browser once she is signed in (the audit trail is read with it). */
let alice: Member;
const cleanup: Member[] = [];
const cspErrors: string[] = [];

/** A free loopback port: the redirect URI registered at the provider must name the admin API before `up` starts. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

async function startProvider(redirectUri: string): Promise<string> {
  if (!existsSync(join(PROVIDER_DIR, 'node_modules', 'oidc-provider'))) {
    throw new Error(`the OpenID provider's packages are missing: run \`npm ci\` in ${PROVIDER_DIR}`);
  }
  const child = spawn(process.execPath, ['provider.mjs'], {
    cwd: PROVIDER_DIR,
    env: {
      ...process.env,
      PORT: '0',
      CLIENT_ID,
      CLIENT_SECRET,
      REDIRECT_URI: redirectUri,
      ACCOUNTS: JSON.stringify(ACCOUNTS),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  provider = child;
  if (child.stderr) createInterface({ input: child.stderr }).on('line', (l) => providerLog.push(l));
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the OpenID provider did not start: ${providerLog.join('\n')}`)), 30_000);
    child.once('exit', (code) => reject(new Error(`the OpenID provider exited with ${code}: ${providerLog.join('\n')}`)));
    if (!child.stdout) return reject(new Error('no stdout'));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const match = /^listening (http:\/\/127\.0\.0\.1:\d+)$/.exec(line.trim());
      if (match?.[1]) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
}

/** Puts the provider in one of its test modes (`normal`, `wrong-audience`, `tampered`, ...). */
async function providerMode(mode: string): Promise<void> {
  const response = await fetch(`${issuer}/__test/mode`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ mode }),
  });
  expect(response.status).toBe(204);
}

beforeAll(async () => {
  // The console's address as the banner prints it (the web origin): sign-in starts and comes back there.
  const port = await freePort();
  adminUrl = `http://127.0.0.1:${port}`;
  issuer = await startProvider(`${adminUrl}/auth/callback`);
  up = await startUp(['--oidc-issuer', issuer, '--oidc-client-id', CLIENT_ID, '--oidc-client-secret', CLIENT_SECRET], {
    listen: `127.0.0.1:${port}`,
  });
  expect(up.web).toBe(adminUrl);
  expect(up.banner.join('\n')).toContain(`admin sign-in ${adminUrl}/admin/`);
  expect(up.banner.join('\n')).toContain('(sign in with your organisation account)');
  browser = await launch();
});

afterAll(async () => {
  for (const m of cleanup) await m.context.close();
  await browser?.close();
  await up?.stop();
  if (provider && provider.exitCode === null) {
    const exited = new Promise((r) => provider?.once('exit', r));
    provider.kill('SIGTERM');
    await exited;
  }
});

async function axe(page: Page, what: string): Promise<void> {
  const result = await new AxeBuilder({ page }).analyze();
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  expect(bad.map((v) => `${what}: ${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)).toEqual([]);
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(screenshotDir(), `console-oidc-${name}.png`), fullPage: true });
}

/** A console user's own browser profile (its own cookies at the provider too); CSP refusals are collected. */
async function consoleUser(options: { locale?: string; width?: number; height?: number } = {}): Promise<Member> {
  const m = await newMember(browser, options);
  m.page.on('console', (msg) => {
    if (/Content Security Policy|Refused to/.test(msg.text())) cspErrors.push(msg.text());
  });
  cleanup.push(m);
  return m;
}

/** The provider button, in either language. */
function oidcButton(page: Page) {
  return page.getByRole('link', { name: new RegExp(`^(${en.signIn.oidc}|${fr.signIn.oidc})$`) });
}

/**
 * From the console's sign-in page, through the provider's own login form (and its consent page if it shows
 * one), back to wherever the admin API sends the browser.
 */
async function signInAtProvider(page: Page, login: string): Promise<void> {
  await page.goto(`${adminUrl}/admin/`);
  const button = oidcButton(page);
  expect(await button.getAttribute('href')).toBe('/auth/login');
  await button.click();
  // The provider's login page (devInteractions): any login, the password is ignored.
  await page.waitForURL((url) => url.origin === issuer && url.pathname.startsWith('/interaction/'));
  await page.locator('input[name="login"]').fill(login);
  await page.locator('input[name="password"]').fill('any password');
  await page.getByRole('button', { name: 'Sign-in' }).click();
  // Consent, if the provider asks for it (this one grants the requested scopes itself).
  await page.waitForURL((url) => url.origin === adminUrl || url.pathname.startsWith('/interaction/'));
  if (new URL(page.url()).origin === issuer) {
    await page.getByRole('button', { name: 'Continue' }).click();
  }
  await page.waitForURL((url) => url.origin === adminUrl && url.pathname === '/admin/');
}

/** What `/auth/session` answers from this browser profile (its cookies). */
async function session(m: Member): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await m.context.request.get(`${adminUrl}/auth/session`);
  const text = await response.text();
  return { status: response.status(), body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

describe('the administrator console with an OpenID Connect provider', () => {
  test('`up` with an issuer prints no admin token; the sign-in page offers the organisation account, axe finds nothing serious', async () => {
    expect(up.token).toBe('');
    expect(up.banner.filter((l) => l.trim().startsWith('admin token'))).toEqual([]);
    const methods = (await (await fetch(`${adminUrl}/auth/methods`)).json()) as { oidc: boolean };
    expect(methods.oidc).toBe(true);
    const m = await consoleUser();
    const response = await m.page.goto(`${adminUrl}/admin/`);
    expect(response?.status()).toBe(200);
    await m.page.getByRole('heading', { name: 'Sign in to the console' }).waitFor();
    await m.page.getByRole('link', { name: 'Sign in with your organisation account' }).waitFor();
    // The token form stays, for API tokens.
    expect(await m.page.getByLabel('Admin or API token').count()).toBe(1);
    expect(await m.page.getByRole('alert').count()).toBe(0);
    await shot(m.page, 'sign-in-desktop-en');
    await axe(m.page, 'sign-in with a provider');
  });

  test('an administrator signs in at the provider and lands on the Bubbles page as an organisation admin', async () => {
    alice = await consoleUser();
    const p = alice.page;
    expect((await session(alice)).status).toBe(401);
    await signInAtProvider(p, 'alice');
    await p.getByRole('heading', { name: 'Bubbles', exact: true }).waitFor();
    await expect.poll(() => p.locator('header .who span').innerText()).toBe('alice · administrator');
    await p.getByRole('heading', { name: 'Create a bubble' }).waitFor();
    expect(await p.getByText(/^Read-only: as an auditor/).count()).toBe(0);
    const s = await session(alice);
    expect(s.status).toBe(200);
    expect(s.body).toMatchObject({ name: 'alice', role: 'admin', bubbles: ['*'] });
    // The session is the provider's doing: the console says so in the audit trail.
    await p.getByRole('link', { name: 'Audit trail' }).click();
    await p.getByRole('cell', { name: 'admin.signed_in' }).first().waitFor();
    await p.getByRole('link', { name: 'Bubbles' }).first().click();
    await p.getByRole('heading', { name: 'Create a bubble' }).waitFor();
    await shot(p, 'signed-in-desktop-en');
    await axe(p, 'bubbles after provider sign-in');
  });

  test('an auditor signs in in another browser and sees the read-only banner, no control to create', async () => {
    const ann = await consoleUser();
    const p = ann.page;
    await signInAtProvider(p, 'ann');
    await p.getByText(/^Read-only: as an auditor/).waitFor();
    await expect.poll(() => p.locator('header .who span').innerText()).toBe('ann · auditor');
    await p.getByRole('heading', { name: 'Bubbles', exact: true }).waitFor();
    expect(await p.getByRole('heading', { name: 'Create a bubble' }).count()).toBe(0);
    const s = await session(ann);
    expect(s.status).toBe(200);
    expect(s.body).toMatchObject({ name: 'ann', role: 'auditor' });
  });

  test('an account with no PeerBubble role is sent back to the sign-in page, which says why; no session', async () => {
    const nobody = await consoleUser();
    const p = nobody.page;
    await signInAtProvider(p, 'nobody');
    const alert = p.getByRole('alert');
    await alert.waitFor();
    expect(await alert.innerText()).toBe(en.signIn.providerError.no_role);
    await p.getByRole('heading', { name: 'Sign in to the console' }).waitFor();
    await p.getByRole('link', { name: 'Sign in with your organisation account' }).waitFor();
    // The code is taken off the address (a reload does not show it again).
    expect(new URL(p.url()).search).toBe('');
    expect(await p.locator('header .who').count()).toBe(0);
    expect((await session(nobody)).status).toBe(401);
    await shot(p, 'no-role-desktop-en');
    await axe(p, 'sign-in with the no_role message');

    // In French, at phone width.
    const personne = await consoleUser({ locale: 'fr-FR', width: 390, height: 844 });
    const q = personne.page;
    await signInAtProvider(q, 'nobody');
    const alerte = q.getByRole('alert');
    await alerte.waitFor();
    expect(await alerte.innerText()).toBe(fr.signIn.providerError.no_role);
    await q.getByRole('heading', { name: 'Connexion à la console' }).waitFor();
    await q.getByRole('link', { name: fr.signIn.oidc }).waitFor();
    expect((await session(personne)).status).toBe(401);
    await shot(q, 'no-role-phone-fr');
    await axe(q, 'sign-in with the no_role message (fr, phone)');
  });

  test('a provider whose ID tokens are wrong: the sign-in is refused with a reason, and no session is made', async () => {
    // `wrong-audience`: re-signed, valid signature, meant for another client. `tampered`: the roles claim is
    // changed to admin after signing, for an account that has none.
    for (const [mode, login] of [
      ['wrong-audience', 'alice'],
      ['tampered', 'nobody'],
    ] as const) {
      await providerMode(mode);
      try {
        const m = await consoleUser();
        const p = m.page;
        await signInAtProvider(p, login);
        const alert = p.getByRole('alert');
        await alert.waitFor();
        expect(await alert.isVisible()).toBe(true);
        expect(await alert.innerText(), `${mode}: ${await alert.innerText()}`).toMatch(/could not be verified|did not confirm/);
        expect(await p.locator('header .who').count()).toBe(0);
        expect(await p.getByRole('heading', { name: 'Create a bubble' }).count()).toBe(0);
        expect((await session(m)).status).toBe(401);
        if (mode === 'wrong-audience') await shot(p, 'id-token-refused-desktop-en');
      } finally {
        await providerMode('normal');
      }
    }
    // The provider answers rightly again: the same administrator signs in.
    const again = await consoleUser();
    await signInAtProvider(again.page, 'alice');
    await again.page.getByRole('heading', { name: 'Create a bubble' }).waitFor();
    expect((await session(again)).status).toBe(200);
  });

  test('no Content-Security-Policy refusal on the console pages; the refused sign-ins were audited', async () => {
    expect(cspErrors).toEqual([]);
    // Every sign-in went through the provider's /token with this client's secret.
    expect(providerLog.filter((l) => /^POST \/token -> 200/.test(l)).length).toBeGreaterThanOrEqual(7);
    const csv = await (await alice.context.request.get(`${adminUrl}/api/v1/audit.csv`)).text();
    expect(csv.split('\r\n')[0]).toBe('at_utc,at_unix,bubble,actor,action,detail');
    const refused = csv.split('\r\n').filter((l) => l.includes('admin.sign_in_refused'));
    // nobody, twice (English and French): the refusal for want of a role is audited.
    expect(refused.filter((l) => l.includes('oidc:nobody')).length).toBeGreaterThanOrEqual(2);
    expect(csv.split('\r\n').filter((l) => l.includes('admin.signed_in')).length).toBeGreaterThanOrEqual(3);
  });
});
