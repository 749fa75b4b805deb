// What the end-to-end tests share: a real `peerbubble up` on loopback (ports chosen by the kernel, a fresh data
// directory), the admin API it serves, one Debian Chromium with the flags ../../shared/ENVIRONMENT.md lists, and
// the steps a member takes in the UI.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { type Browser, type BrowserContext, type Page, chromium } from 'playwright-core';
import { expect } from 'vitest';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  // pi.lan stands for a micro-node's LAN name: an origin that is not loopback, so only HTTPS makes it secure.
  // localhost: a host name on loopback, for WebAuthn (a relying party is a domain, never an IP address).
  '--host-resolver-rules=MAP pi.lan 127.0.0.1, MAP localhost 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
  '--allow-loopback-in-peer-connection',
];

export interface Up {
  web: string;
  /** The signaling URL (ws:// or wss://). */
  signal: string;
  api: string;
  /** The bootstrap admin token; '' when `up` printed none (an OpenID Connect issuer is configured). */
  token: string;
  invites: string[];
  logs: string[];
  /** The banner, as printed. */
  banner: string[];
  /** Where `up` keeps its state. */
  data: string;
  stop: () => Promise<void>;
}

/**
 * Starts `peerbubble up` (with `extra` flags) and reads its banner. `listen` and `adminListen` replace the web and
 * admin API addresses (`127.0.0.1:0` otherwise), for a test that must know one before `up` starts (an OpenID
 * redirect URI).
 */
export async function startUp(extra: string[] = [], options: { listen?: string; adminListen?: string } = {}): Promise<Up> {
  const bin = process.env.PEERBUBBLE_BIN;
  if (!bin) throw new Error('PEERBUBBLE_BIN is not set (run through `cargo xtask e2e`)');
  const data = mkdtempSync(join(tmpdir(), 'peerbubble-e2e-'));
  const child: ChildProcess = spawn(
    bin,
    ['up', '--data-dir', data, '--listen', options.listen ?? '127.0.0.1:0', '--admin-listen', options.adminListen ?? '127.0.0.1:0', '--turn-port', '0', '--turn-tls-port', '0', ...extra],
    { env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info,peerbubble_bubble_server=trace' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const logs: string[] = [];
  if (child.stderr) createInterface({ input: child.stderr }).on('line', (l) => logs.push(l));
  const banner: string[] = [];
  // A start that fails (no banner, an unexpected one) stops the process it made: nothing stays running.
  try {
    return await started(child, data, logs, banner);
  } catch (err) {
    child.kill('SIGKILL');
    rmSync(data, { recursive: true, force: true });
    throw err;
  }
}

async function started(child: ChildProcess, data: string, logs: string[], banner: string[]): Promise<Up> {
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`peerbubble up printed no banner: ${banner.join('\n')}`)), 60_000);
    child.on('exit', (code) => reject(new Error(`peerbubble up exited with ${code}: ${logs.slice(-20).join('\n')}`)));
    if (!child.stdout) return reject(new Error('no stdout'));
    createInterface({ input: child.stdout }).on('line', (line) => {
      banner.push(line);
      if (line.startsWith('Stop with Ctrl-C')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const field = (label: string) => {
    for (const line of banner) {
      const rest = line.trim().startsWith(label) ? line.trim().slice(label.length).trim() : null;
      if (rest) return rest.split(/\s+/)[0] ?? '';
    }
    throw new Error(`no ${label} in the banner:\n${banner.join('\n')}`);
  };
  const invites: string[] = [];
  for (const word of banner.join(' ').split(/\s+/).map((w) => w.replace(/'/g, ''))) {
    if (word.includes('/enroll#demo.') && !invites.includes(word)) invites.push(word);
  }
  return {
    web: field('web client').replace(/\/$/, ''),
    signal: field('signaling'),
    api: field('admin API'),
    token: banner.some((l) => l.trim().startsWith('admin token')) ? field('admin token') : '',
    invites,
    logs,
    banner,
    data,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/** The admin API, as an administrator uses it. */
export async function admin(up: Up, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(`${up.api}${path}`, {
    method,
    headers: { authorization: `Bearer ${up.token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

/** A new invite link in the demo bubble (the admin API names the web client's address, `up`'s public URL). */
export async function invite(up: Up, name: string, categories: string[]): Promise<string> {
  const answer = await admin(up, 'POST', '/api/v1/bubbles/demo/invites', { display_name: name, categories });
  return String(answer.link);
}

/** The Chromium the tests drive (xtask installs Debian's). */
export const CHROMIUM_PATH = process.env.CHROMIUM ?? '/usr/bin/chromium';

export async function launch(extra: string[] = []): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: [...CHROMIUM_ARGS, ...extra] });
}

/** Chromium's fake camera and microphone, allowed without asking. */
export const FAKE_MEDIA = ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required'];

export interface Member {
  context: BrowserContext;
  page: Page;
  /** Every WebSocket frame the page sent or received (the canary reads them). */
  frames: string[];
  /** The frames the page sent. */
  sent: string[];
}

/** A member's own browser profile; `https` accepts the micro-node's self-signed certificate, as a member does once. */
export async function newMember(
  browser: Browser,
  options: { width?: number; height?: number; locale?: string; https?: boolean } = {},
): Promise<Member> {
  const context = await browser.newContext({
    viewport: { width: options.width ?? 1280, height: options.height ?? 800 },
    locale: options.locale ?? 'en-US',
    ignoreHTTPSErrors: options.https ?? false,
  });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  const frames: string[] = [];
  const sent: string[] = [];
  // The worker's WebSocket is reported on its page.
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => {
      frames.push(String(f.payload));
      sent.push(String(f.payload));
    });
    ws.on('framereceived', (f) => frames.push(String(f.payload)));
  });
  return { context, page, frames, sent };
}

export const PASSPHRASE = 'orange tugboat quietly measures seven lanterns';

/** Opens an invite link and enrolls with a passphrase; returns when the member's home screen shows. */
export async function enroll(m: Member, link: string, passphrase = PASSPHRASE): Promise<void> {
  await m.page.goto(link);
  await m.page.getByLabel(/Choose a passphrase|Choisissez une phrase secrète/).fill(passphrase);
  await m.page.getByLabel(/Type the passphrase again|Saisissez-la à nouveau/).fill(passphrase);
  await m.page.getByRole('button', { name: /^(Join|Rejoindre)$/ }).click();
  await m.page.getByRole('navigation').waitFor({ timeout: 60_000 });
}

export async function unlock(m: Member, passphrase = PASSPHRASE): Promise<void> {
  await m.page.getByLabel(/^(Passphrase|Phrase secrète)$/).fill(passphrase);
  await m.page.getByRole('button', { name: /^(Unlock|Déverrouiller)$/ }).click();
}

export function screenshotDir(): string {
  const dir = process.env.PEERBUBBLE_SCREENSHOTS ?? join(tmpdir(), 'peerbubble-screenshots');
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** A screenshot of the viewport, `<name>.png` in {@link screenshotDir}. */
export async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(screenshotDir(), `${name}.png`), fullPage: false });
}

/** Opens the contact (or group) called `name` from the sidebar. */
export async function open(page: Page, name: string | RegExp): Promise<void> {
  await page.getByRole('navigation').getByRole('button', { name }).first().click();
}

/** Creates a group from the sidebar with the members whose names match; `filled` runs before "Create". */
export async function createGroup(page: Page, name: string, members: RegExp[], filled?: () => Promise<void>): Promise<void> {
  await page.getByRole('button', { name: 'New group' }).click();
  await page.getByLabel('Group name').fill(name);
  for (const m of members) await page.getByRole('dialog').getByLabel(m).check();
  await filled?.();
  await page.getByRole('button', { name: 'Create' }).click();
}

export async function send(page: Page, text: string): Promise<void> {
  const box = page.getByRole('textbox', { name: /Write a message|Écrire un message/ });
  await expect.poll(() => box.isEnabled(), { timeout: 60_000 }).toBe(true);
  await box.fill(text);
  await page.getByRole('button', { name: /^(Send|Envoyer)$/ }).click();
  await expect.poll(() => box.inputValue()).toBe('');
}

/** Every message text on screen, in order (each masked one revealed to be read). */
export async function texts(page: Page): Promise<string[]> {
  // Message by message: a list of the masked ones would shift under the clicks (each reveal removes one).
  const messages = page.locator('.message');
  const out: string[] = [];
  for (let i = 0, n = await messages.count(); i < n; i++) {
    const message = messages.nth(i);
    const hidden = message.getByRole('button', { name: /Hidden message|Message masqué/ });
    if ((await hidden.count()) > 0) await hidden.click();
    out.push(...(await message.locator('.text').allInnerTexts()));
  }
  return out;
}
