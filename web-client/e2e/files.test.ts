// Files in the browser, against a real `peerbubble up`: a 256 MiB file between two members in Chromium with the
// receiver's page reloaded in the middle (it resumes, not restarts), progress on both sides, the received file
// kept encrypted at rest (a canary the file holds is nowhere in IndexedDB or OPFS), "save a decrypted copy"
// giving the same bytes; pause, resume and cancel from either side; a relay-only transfer through the bubble's
// TURN; and files both ways with the native peer (`peerbubble chat`).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, onTestFailed, test } from 'vitest';
import { type Member, type Up, createGroup, enroll, invite, launch, newMember, open, screenshotDir, startUp, unlock } from './harness';

let up: Up;
let browser: Browser;
const members: Member[] = [];
const scratch = mkdtempSync(join(tmpdir(), 'peerbubble-e2e-files-'));
const bots: ChildProcess[] = [];
const CANARY = 'CANARY-file-at-rest-7d3f9e';

beforeAll(async () => {
  [up, browser] = await Promise.all([startUp(['--turn-allow-peer', '127.0.0.0/8']), launch()]);
});

afterAll(async () => {
  for (const bot of bots) bot.kill('SIGTERM');
  for (const m of members) await m.context.close().catch(() => undefined);
  await browser?.close();
  await up?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

/** A file of `size` bytes, pseudo-random, with the canary written every MiB; its SHA-256 (hex). */
function makeFile(name: string, size: number): { path: string; sha256: string } {
  const path = join(scratch, name);
  const fd = openSync(path, 'w');
  const hash = createHash('sha256');
  const block = Buffer.alloc(1 << 20);
  let state = 0x9e3779b9;
  for (let at = 0; at < size; at += block.length) {
    for (let i = 0; i < block.length; i += 4) {
      state = (Math.imul(state, 1_664_525) + 1_013_904_223) >>> 0;
      block.writeUInt32LE(state, i);
    }
    block.write(CANARY, 4096);
    const part = block.subarray(0, Math.min(block.length, size - at));
    writeSync(fd, part);
    hash.update(part);
  }
  closeSync(fd);
  return { path, sha256: hash.digest('hex') };
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

async function member(name: string, options: Parameters<typeof newMember>[1] = {}): Promise<Member> {
  const m = await newMember(browser, options);
  members.push(m);
  await enroll(m, await invite(up, name, ['field-team']));
  return m;
}

/** Opens the conversation with `name` and waits until it is set up end to end and the direct link is open. */
async function talkTo(page: Page, name: RegExp): Promise<void> {
  await expect.poll(() => page.getByRole('navigation').innerText(), { timeout: 60_000 }).toMatch(name);
  await open(page, name);
  await expect.poll(() => page.getByRole('textbox', { name: /Write a message|Écrire un message/ }).isEnabled(), { timeout: 60_000 }).toBe(true);
  // Conversations start masked (file names too); these tests read the names, so this device shows them.
  await page.getByRole('checkbox', { name: MASK_LABEL }).uncheck();
}

const MASK_LABEL = /^(Hide messages|Masquer les messages)$/;

function card(page: Page, name: string) {
  return page.locator('.message.file', { hasText: name });
}

async function percent(page: Page, name: string): Promise<number> {
  const bar = card(page, name).getByRole('progressbar');
  if ((await bar.count()) === 0) return (await card(page, name).getAttribute('data-state')) === 'done' ? 100 : -1;
  return Number(await bar.getAttribute('value'));
}

/** Every byte this page's origin stores: OPFS files and IndexedDB records (the key store, device key entry). */
async function storedBytesContain(page: Page, needle: string): Promise<{ scanned: number; found: boolean }> {
  return page.evaluate(async (needle) => {
    const want = new TextEncoder().encode(needle);
    let scanned = 0;
    let found = false;
    const scan = (bytes: Uint8Array) => {
      scanned += bytes.byteLength;
      outer: for (let i = 0; i + want.length <= bytes.length; i++) {
        for (let j = 0; j < want.length; j++) if (bytes[i + j] !== want[j]) continue outer;
        found = true;
        return;
      }
    };
    const walk = async (dir: FileSystemDirectoryHandle) => {
      for await (const entry of (dir as unknown as { values(): AsyncIterable<FileSystemHandle> }).values()) {
        if (entry.kind === 'directory') await walk(entry as FileSystemDirectoryHandle);
        else {
          const file = await (entry as FileSystemFileHandle).getFile();
          for (let at = 0; at < file.size; at += 8 << 20) {
            scan(new Uint8Array(await file.slice(at, Math.min(file.size, at + (8 << 20) + 64)).arrayBuffer()));
          }
        }
      }
    };
    await walk(await navigator.storage.getDirectory());
    const db = await new Promise<IDBDatabase>((resolve, reject) => {
      const r = indexedDB.open('peerbubble');
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
    for (const store of Array.from(db.objectStoreNames)) {
      const values = await new Promise<unknown[]>((resolve, reject) => {
        const r = db.transaction(store, 'readonly').objectStore(store).getAll();
        r.onsuccess = () => resolve(r.result);
        r.onerror = () => reject(r.error);
      });
      for (const v of values) {
        if (v instanceof Uint8Array) scan(v);
        else scan(new TextEncoder().encode(JSON.stringify(v, (_k, x) => (x instanceof Uint8Array ? Array.from(x) : x))));
      }
    }
    db.close();
    return { scanned, found };
  }, needle);
}

async function saveDecrypted(page: Page, name: string): Promise<string> {
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 120_000 }),
    card(page, name).getByRole('button', { name: /Save a decrypted copy|Enregistrer une copie déchiffrée/ }).click(),
  ]);
  const path = join(scratch, `saved-${Date.now()}-${name}`);
  await download.saveAs(path);
  expect(download.suggestedFilename()).toBe(name);
  return path;
}

describe('files between two browsers', () => {
  let alice: Member;
  let bob: Member;

  test('two members set up their conversation and a direct link', async () => {
    alice = await member('Alice (field team)');
    bob = await member('Bob (field team)');
    await talkTo(alice.page, /Bob \(field team\)/);
    await talkTo(bob.page, /Alice \(field team\)/);
    await expect.poll(() => alice.page.locator('.pane-head .tag.link').innerText(), { timeout: 60_000 }).toBe('Direct connection');
  });

  test('256 MiB with the receiver reloading in the middle: resumed, checked, kept encrypted, saved equal', async () => {
    onTestFailed(async () => {
      console.log(up.logs.slice(-40).join('\n'));
      console.log(`Bob's page said:\n${await bob.page.locator('body').innerText().catch(() => '(no page)')}`);
    });
    const big = makeFile('survey-256.bin', 256 << 20);
    await alice.page.locator('input[type=file][aria-label="Send a file"]').setInputFiles(big.path);
    // Bob is asked; nothing moves before he accepts.
    await card(bob.page, 'survey-256.bin').getByRole('button', { name: 'Accept' }).click({ timeout: 120_000 });
    await expect.poll(() => percent(bob.page, 'survey-256.bin'), { timeout: 120_000 }).toBeGreaterThanOrEqual(25);
    // Progress with speed and time left on both sides.
    await expect.poll(() => card(alice.page, 'survey-256.bin').innerText(), { timeout: 30_000 }).toMatch(/of 268 MB · .+\/s · .+ left/);
    await alice.page.screenshot({ path: join(screenshotDir(), 'file-sending-desktop-en.png') });
    const before = await percent(bob.page, 'survey-256.bin');
    await bob.page.reload();
    await unlock(bob);
    await bob.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await open(bob.page, /Alice \(field team\)/);
    // It goes on from what was kept, not from zero.
    const after = await percent(bob.page, 'survey-256.bin');
    expect(after).toBeGreaterThanOrEqual(Math.min(before, 25) - 1);
    await expect.poll(() => card(bob.page, 'survey-256.bin').getAttribute('data-state'), { timeout: 240_000 }).toBe('done');
    await expect.poll(() => card(alice.page, 'survey-256.bin').innerText(), { timeout: 30_000 }).toContain('received it and its fingerprint (SHA-256) matched');
    await bob.page.screenshot({ path: join(screenshotDir(), 'file-received-desktop-en.png') });
    // At rest: the canary the file holds is nowhere in what the origin stores (it is all sealed).
    const rest = await storedBytesContain(bob.page, CANARY);
    expect(rest.scanned).toBeGreaterThan(256 << 20);
    expect(rest.found).toBe(false);
    // Nothing of the file crossed signaling or reached the server's logs.
    expect([...alice.frames, ...bob.frames].join('\n')).not.toContain(CANARY);
    expect(up.logs.join('\n')).not.toContain(CANARY);
    expect(sha256(await saveDecrypted(bob.page, 'survey-256.bin'))).toBe(big.sha256);
  });

  test('either side pauses and the other is told; the receiver resumes; a cancel stops both', async () => {
    const mid = makeFile('photos-64.bin', 64 << 20);
    // Masked, a file's name is hidden like a message until shown.
    await bob.page.getByRole('checkbox', { name: MASK_LABEL }).check();
    await alice.page.locator('input[type=file][aria-label="Send a file"]').setInputFiles(mid.path);
    const asked = bob.page.locator('.message.file[data-state="asked"]');
    await expect.poll(() => asked.getByRole('button', { name: 'Hidden file name — show' }).count(), { timeout: 60_000 }).toBe(1);
    expect(await bob.page.locator('.conversation').innerText()).not.toContain('photos-64.bin');
    await asked.getByRole('button', { name: 'Hidden file name — show' }).click();
    await expect.poll(() => asked.innerText(), { timeout: 10_000 }).toContain('photos-64.bin');
    await bob.page.getByRole('checkbox', { name: MASK_LABEL }).uncheck();
    await card(bob.page, 'photos-64.bin').getByRole('button', { name: 'Accept' }).click({ timeout: 60_000 });
    await expect.poll(() => percent(bob.page, 'photos-64.bin'), { timeout: 60_000 }).toBeGreaterThan(0);
    await card(bob.page, 'photos-64.bin').getByRole('button', { name: 'Pause' }).click();
    await expect.poll(() => card(alice.page, 'photos-64.bin').innerText(), { timeout: 30_000 }).toContain('Paused by Bob (field team)');
    // Held: nothing more arrives (chunks in flight land within a moment).
    await new Promise((r) => setTimeout(r, 1_500));
    const held = await percent(bob.page, 'photos-64.bin');
    await new Promise((r) => setTimeout(r, 2_000));
    expect(await percent(bob.page, 'photos-64.bin')).toBe(held);
    expect(held).toBeLessThan(100);
    await bob.page.screenshot({ path: join(screenshotDir(), 'file-paused-desktop-en.png') });
    await card(bob.page, 'photos-64.bin').getByRole('button', { name: 'Resume' }).click();
    await expect.poll(() => card(bob.page, 'photos-64.bin').getAttribute('data-state'), { timeout: 120_000 }).toBe('done');

    const other = makeFile('notes-64.bin', 64 << 20);
    await alice.page.locator('input[type=file][aria-label="Send a file"]').setInputFiles(other.path);
    await card(bob.page, 'notes-64.bin').getByRole('button', { name: 'Accept' }).click({ timeout: 60_000 });
    await card(alice.page, 'notes-64.bin').getByRole('button', { name: 'Pause' }).click({ timeout: 60_000 });
    await expect.poll(() => card(bob.page, 'notes-64.bin').innerText(), { timeout: 30_000 }).toContain('Paused by Alice (field team)');
    await card(alice.page, 'notes-64.bin').getByRole('button', { name: 'Cancel' }).click();
    await expect.poll(() => card(bob.page, 'notes-64.bin').count(), { timeout: 30_000 }).toBe(0);
    await expect.poll(() => card(alice.page, 'notes-64.bin').count(), { timeout: 30_000 }).toBe(0);
    // Deleting a received file removes it from the device.
    await card(bob.page, 'photos-64.bin').getByRole('button', { name: 'Delete from this device' }).click();
    await expect.poll(() => card(bob.page, 'photos-64.bin').count(), { timeout: 30_000 }).toBe(0);
  });
});

test('relay only: a file goes through the bubble TURN (French, phone width)', async () => {
  const carol = await member('Carol (field team)');
  await carol.page.getByLabel("Always go through the bubble's relay").check();
  const dan = await member('Dan (field team)', { locale: 'fr-FR', width: 390, height: 844 });
  await talkTo(carol.page, /Dan \(field team\)/);
  await expect.poll(() => carol.page.locator('.pane-head .tag.link').innerText(), { timeout: 60_000 }).toBe("Through the bubble's relay");
  await talkTo(dan.page, /Carol \(field team\)/);
  const file = makeFile('relais-16.bin', 16 << 20);
  await carol.page.locator('input[type=file][aria-label="Send a file"]').setInputFiles(file.path);
  await card(dan.page, 'relais-16.bin').getByRole('button', { name: 'Accepter' }).click({ timeout: 60_000 });
  await expect.poll(() => card(dan.page, 'relais-16.bin').getAttribute('data-state'), { timeout: 120_000 }).toBe('done');
  await dan.page.screenshot({ path: join(screenshotDir(), 'file-received-phone-fr.png') });
  expect(await card(dan.page, 'relais-16.bin').innerText()).toContain('Conservé chiffré sur cet appareil');
  expect(sha256(await saveDecrypted(dan.page, 'relais-16.bin'))).toBe(file.sha256);
});

test('a file sent to a group reaches every member, each over its own pair connection, and shows in the group', async () => {
  const erin = await member('Erin (field team)');
  const finn = await member('Finn (field team)');
  const gail = await member('Gail (field team)', { locale: 'fr-FR', width: 390, height: 844 });
  for (const [m, others] of [
    [erin, ['Finn', 'Gail']],
    [finn, ['Erin', 'Gail']],
    [gail, ['Erin', 'Finn']],
  ] as const) {
    for (const other of others) {
      await expect.poll(() => m.page.getByRole('navigation').innerText(), { timeout: 60_000 }).toContain(`${other} (field team)`);
    }
  }
  // Nobody has a 1:1 conversation yet: sending to the group sets each pair's up first.
  await createGroup(erin.page, 'Convoy', [/Finn \(field team\)/, /Gail \(field team\)/]);
  await open(erin.page, 'Convoy');
  await expect.poll(() => erin.page.getByRole('textbox', { name: 'Write a message' }).isEnabled(), { timeout: 60_000 }).toBe(true);
  await erin.page.getByRole('checkbox', { name: MASK_LABEL }).uncheck();
  for (const m of [finn, gail]) {
    await expect.poll(() => m.page.getByRole('navigation').innerText(), { timeout: 60_000 }).toContain('Convoy');
    await open(m.page, 'Convoy');
    await m.page.getByRole('checkbox', { name: MASK_LABEL }).uncheck();
  }
  const file = makeFile('convoy-route.bin', 4 << 20);
  await erin.page.locator('input[type=file][aria-label="Send a file"]').setInputFiles(file.path);
  // One card per member on the sender's side, in the group.
  await expect.poll(() => card(erin.page, 'convoy-route.bin').count(), { timeout: 90_000 }).toBe(2);
  await card(finn.page, 'convoy-route.bin').getByRole('button', { name: 'Accept' }).click({ timeout: 90_000 });
  await card(gail.page, 'convoy-route.bin').getByRole('button', { name: 'Accepter' }).click({ timeout: 90_000 });
  for (const m of [finn, gail]) {
    await expect.poll(() => card(m.page, 'convoy-route.bin').getAttribute('data-state'), { timeout: 120_000 }).toBe('done');
  }
  await expect
    .poll(async () => Promise.all([0, 1].map((i) => card(erin.page, 'convoy-route.bin').nth(i).getAttribute('data-state'))), { timeout: 60_000 })
    .toEqual(['done', 'done']);
  await erin.page.screenshot({ path: join(screenshotDir(), 'file-group-sent-desktop-en.png') });
  await gail.page.screenshot({ path: join(screenshotDir(), 'file-group-received-phone-fr.png') });
  expect(sha256(await saveDecrypted(finn.page, 'convoy-route.bin'))).toBe(file.sha256);
  expect(sha256(await saveDecrypted(gail.page, 'convoy-route.bin'))).toBe(file.sha256);
  // Carried by each pair's 1:1 conversation, but shown in the group only.
  await open(finn.page, /Erin \(field team\)/);
  await expect.poll(() => finn.page.getByRole('textbox', { name: 'Write a message' }).isEnabled(), { timeout: 60_000 }).toBe(true);
  expect(await finn.page.locator('.message.file').count()).toBe(0);
});

test('files both ways with the native peer (peerbubble chat)', async () => {
  const bin = process.env.PEERBUBBLE_BIN ?? '';
  const key = join(scratch, 'native.key');
  const downloads = mkdtempSync(join(scratch, 'downloads-'));
  execFileSync(bin, ['enroll', '--api', up.api, '--invite', await invite(up, 'Field laptop', ['field-team']), '--key-out', key]);
  const erin = await member('Erin (field team)');
  // The bot starts once the bubble's directory has both (it answers the conversation Erin starts).
  await expect.poll(() => erin.page.getByRole('navigation').innerText(), { timeout: 60_000 }).toContain('Field laptop');
  const bot = spawn(
    bin,
    ['chat', '--download-dir', downloads, '--rtc-bind', '127.0.0.1:0', '--url', up.signal, '--key', key],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  bots.push(bot);
  const log: string[] = [];
  bot.stdout?.on('data', (d: Buffer) => log.push(d.toString()));
  bot.stderr?.on('data', (d: Buffer) => log.push(d.toString()));
  onTestFailed(() => console.log(`peerbubble chat said:\n${log.join('')}`));
  await talkTo(erin.page, /Field laptop/);
  await expect.poll(() => erin.page.locator('.pane-head .tag.link').innerText(), { timeout: 60_000 }).toBe('Direct connection');
  // Browser to native: the native peer accepts into its download directory.
  const toNative = makeFile('to-native-8.bin', 8 << 20);
  await erin.page.locator('input[type=file][aria-label="Send a file"]').setInputFiles(toNative.path);
  await expect.poll(() => log.join(''), { timeout: 120_000 }).toContain('file saved to');
  await expect.poll(() => card(erin.page, 'to-native-8.bin').innerText(), { timeout: 30_000 }).toContain('received it');
  expect(sha256(join(downloads, 'to-native-8.bin'))).toBe(toNative.sha256);
  // Native to browser.
  const fromNative = makeFile('from-native-8.bin', 8 << 20);
  bot.stdin?.write(`/file ${fromNative.path}\n`);
  await card(erin.page, 'from-native-8.bin').getByRole('button', { name: 'Accept' }).click({ timeout: 60_000 });
  await expect.poll(() => card(erin.page, 'from-native-8.bin').getAttribute('data-state'), { timeout: 120_000 }).toBe('done');
  expect(sha256(await saveDecrypted(erin.page, 'from-native-8.bin'))).toBe(fromNative.sha256);
});
