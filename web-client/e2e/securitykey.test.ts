// A security key as the key store's third segment, in real Chromium against a real `peerbubble up`: Chromium's
// virtual authenticator (DevTools WebAuthn domain) stands for a USB key with the PRF extension (CTAP2
// hmac-secret). A member adds it at enrollment; from then on the device opens only with passphrase AND key; a
// wrong passphrase, a missing key or another key is refused and erases nothing; a key without PRF is refused
// before the invite is spent; a page opened by IP address does not offer a key (no relying party there).
import type { Browser, CDPSession } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type Member, type Up, PASSPHRASE, enroll, invite, launch, newMember, open, send, shot, startUp, texts, unlock } from './harness';

let up: Up;
let browser: Browser;

beforeAll(async () => {
  up = await startUp();
  browser = await launch();
});

afterAll(async () => {
  await browser?.close();
  await up?.stop();
});

/** The link on `localhost` (a host name: WebAuthn needs a domain as relying party, not 127.0.0.1). */
function onLocalhost(link: string): string {
  const url = new URL(link);
  url.hostname = 'localhost';
  return url.toString();
}

interface Authenticator {
  cdp: CDPSession;
  id: string;
}

/** A virtual USB security key on `m`'s page; `prf` says whether it has the PRF (hmac-secret) extension. */
async function plugKey(m: Member, prf = true): Promise<Authenticator> {
  const cdp = await m.context.newCDPSession(m.page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      ctap2Version: 'ctap2_1',
      transport: 'usb',
      hasResidentKey: false,
      // hmac-secret runs over the CTAP2 PIN/UV protocol's key agreement, which every real key has (with or
      // without a PIN set); without it Chromium evaluates no PRF.
      hasUserVerification: true,
      isUserVerified: true,
      hasPrf: prf,
      hasHmacSecret: prf,
      automaticPresenceSimulation: true,
    },
  });
  return { cdp, id: authenticatorId };
}

async function credentials(key: Authenticator): Promise<Array<{ credentialId: string; rpId?: string }>> {
  const { credentials } = await key.cdp.send('WebAuthn.getCredentials', { authenticatorId: key.id });
  return credentials;
}

async function enrollWithKey(m: Member, link: string, checkKey: boolean): Promise<void> {
  await m.page.goto(link);
  await m.page.getByLabel(/Choose a passphrase|Choisissez une phrase secrète/).fill(PASSPHRASE);
  await m.page.getByLabel(/Type the passphrase again|Saisissez-la à nouveau/).fill(PASSPHRASE);
  const box = m.page.getByRole('checkbox', { name: /security key|clé de sécurité/ });
  if (checkKey) await box.check();
  else if (await box.isVisible()) await box.uncheck();
  await m.page.getByRole('button', { name: /^(Join|Rejoindre)$/ }).click();
}

/** The number of key-store records this page's origin keeps in IndexedDB (all encrypted). */
async function storedRecords(m: Member): Promise<number> {
  return m.page.evaluate(
    () =>
      new Promise<number>((resolve, reject) => {
        const open = indexedDB.open('peerbubble');
        open.onerror = () => reject(new Error('no database'));
        open.onsuccess = () => {
          const count = open.result.transaction('records', 'readonly').objectStore('records').count();
          count.onsuccess = () => {
            resolve(count.result);
            open.result.close();
          };
        };
      }),
  );
}

async function unlockWithKey(m: Member, passphrase: string): Promise<void> {
  await m.page.getByLabel(/^(Passphrase|Phrase secrète)$/).fill(passphrase);
  await m.page.getByRole('button', { name: /^(Unlock with my security key|Déverrouiller avec ma clé de sécurité)$/ }).click();
}

describe('a security key as a third key-store segment', () => {
  let ann: Member;
  let bea: Member;
  let key: Authenticator;

  afterAll(async () => {
    await ann?.context.close();
    await bea?.context.close();
  });

  test('a member adds a security key at enrollment and chats', async () => {
    ann = await newMember(browser);
    bea = await newMember(browser);
    key = await plugKey(ann);
    const link = onLocalhost(await invite(up, 'Ann (field team)', ['field-team']));
    await ann.page.goto(link);
    await ann.page.getByRole('checkbox', { name: /security key/ }).check();
    await expect.poll(() => ann.page.locator('.option').innerText()).toContain('only with this passphrase AND this key');
    await shot(ann.page, 'enroll-security-key-desktop-en');
    await enrollWithKey(ann, link, true);
    await ann.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    // One credential on the key, for this relying party.
    expect((await credentials(key)).map((c) => c.rpId)).toEqual(['localhost']);

    await enrollWithKey(bea, await invite(up, 'Bea (field team)', ['field-team']), false);
    await bea.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await expect.poll(() => ann.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain('Bea (field team)');
    await open(ann.page, /Bea \(field team\)/);
    await send(ann.page, 'Key in hand, heading out');
    await open(bea.page, /Ann \(field team\)/);
    await expect.poll(() => texts(bea.page), { timeout: 30_000 }).toContain('Key in hand, heading out');
  });

  test('the device then opens with passphrase and key; a wrong passphrase is refused and erases nothing', async () => {
    await ann.page.reload();
    await ann.page.getByRole('heading', { name: 'Unlock PeerBubble' }).waitFor();
    await expect.poll(() => ann.page.locator('body').innerText()).toContain('passphrase and your security key');
    await ann.page.getByRole('button', { name: 'Unlock with my security key' }).waitFor();
    await shot(ann.page, 'unlock-security-key-desktop-en');
    const records = await storedRecords(ann);

    // The right key, the wrong passphrase: refused, nothing erased.
    await unlockWithKey(ann, 'not the passphrase at all');
    await expect.poll(() => ann.page.getByRole('alert').innerText(), { timeout: 30_000 }).toContain('Wrong passphrase, or not the security key');
    expect(await storedRecords(ann)).toBe(records);

    await unlockWithKey(ann, PASSPHRASE);
    await ann.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await open(ann.page, /Bea \(field team\)/);
    await expect.poll(() => texts(ann.page), { timeout: 30_000 }).toContain('Key in hand, heading out');
    await send(bea.page, 'Copy, see you there');
    await expect.poll(() => texts(ann.page), { timeout: 30_000 }).toContain('Copy, see you there');
  });

  test('without its key, or with a copy of the credential but not its secret, the store stays shut and whole', async () => {
    await ann.page.reload();
    await ann.page.getByRole('button', { name: 'Unlock with my security key' }).waitFor();
    const records = await storedRecords(ann);
    const [credential] = (await key.cdp.send('WebAuthn.getCredentials', { authenticatorId: key.id })).credentials;
    expect(credential).toBeDefined();

    // The key unplugged, another one in its place: it does not answer for this credential.
    await key.cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: key.id });
    const other = await plugKey(ann);
    await unlockWithKey(ann, PASSPHRASE);
    await expect.poll(() => ann.page.getByRole('alert').innerText(), { timeout: 30_000 }).toContain('did not answer');
    await expect.poll(() => ann.page.getByRole('alert').innerText()).toContain('did not count as an attempt');
    await shot(ann.page, 'unlock-security-key-missing-desktop-en');

    // The same credential (id and signing key) copied onto it: its signature would pass, but the PRF secret is
    // the first key's own, so there is nothing to open the store with.
    await other.cdp.send('WebAuthn.addCredential', { authenticatorId: other.id, credential: credential as never });
    await unlockWithKey(ann, PASSPHRASE);
    await expect.poll(() => ann.page.getByRole('alert').innerText(), { timeout: 30_000 }).toContain('not the security key of this device');
    await ann.page.getByRole('heading', { name: 'Unlock PeerBubble' }).waitFor();
    expect(await storedRecords(ann)).toBe(records);
    // None of this was a wrong passphrase: no waiting.
    expect(await ann.page.getByText(/You can try again in/).count()).toBe(0);
  });

  test('a key without PRF is refused before the invite is spent; an IP address offers no key', async () => {
    const cem = await newMember(browser, { width: 390, height: 844, locale: 'fr-FR' });
    await plugKey(cem, false);
    const link = onLocalhost(await invite(up, 'Cem (field team)', ['field-team']));
    await enrollWithKey(cem, link, true);
    await expect.poll(() => cem.page.getByRole('alert').innerText(), { timeout: 60_000 }).toContain('PRF');
    await shot(cem.page, 'enroll-security-key-no-prf-phone-fr');
    // The same invite still works, without a key.
    await enrollWithKey(cem, link, false);
    await cem.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await cem.context.close();

    const dan = await newMember(browser);
    await dan.page.goto(await invite(up, 'Dan (field team)', ['field-team']));
    await dan.page.getByRole('heading', { name: 'Join your bubble' }).waitFor();
    expect(await dan.page.getByRole('checkbox', { name: /security key/ }).count()).toBe(0);
    await dan.context.close();
  });

  test('French at phone width: enroll with a key, then the unlock screen', async () => {
    const eve = await newMember(browser, { width: 390, height: 844, locale: 'fr-FR' });
    await plugKey(eve);
    const link = onLocalhost(await invite(up, 'Eve (field team)', ['field-team']));
    await eve.page.goto(link);
    await eve.page.getByRole('checkbox', { name: /clé de sécurité/ }).check();
    await shot(eve.page, 'enroll-security-key-phone-fr');
    await enrollWithKey(eve, link, true);
    await eve.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await eve.page.reload();
    await eve.page.getByRole('button', { name: 'Déverrouiller avec ma clé de sécurité' }).waitFor();
    await shot(eve.page, 'unlock-security-key-phone-fr');
    await unlockWithKey(eve, PASSPHRASE);
    await eve.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await eve.context.close();
  });
});

describe('after enrollment: a new passphrase, then a security key added and removed', () => {
  const SECOND = 'violet harbour slowly counts eleven herons';
  let fay: Member;
  let hal: Member;
  let key: Authenticator;

  afterAll(async () => {
    await fay?.context.close();
    await hal?.context.close();
  });

  async function openSecurity(m: Member): Promise<void> {
    await m.page.getByRole('button', { name: /^(Passphrase & key|Phrase secrète et clé)$/ }).click();
    await m.page.getByTestId('protection-status').waitFor();
  }

  async function save(m: Member, current: string): Promise<string> {
    const dialog = m.page.getByRole('dialog');
    await dialog.getByLabel(/^(Current passphrase|Phrase secrète actuelle)$/).fill(current);
    await dialog.getByRole('button', { name: /^(Save|Enregistrer)$/ }).click();
    await expect.poll(() => dialog.locator('.ok, .error').count(), { timeout: 60_000 }).toBeGreaterThan(0);
    return dialog.locator('.ok, .error').first().innerText();
  }

  async function lockAndExpectUnlock(m: Member, withKey: boolean): Promise<void> {
    await m.page.getByRole('dialog').getByRole('button', { name: /^(Close|Fermer)$/ }).click();
    await m.page.getByRole('button', { name: /^(Lock|Verrouiller)$/ }).click();
    const name = withKey ? 'Unlock with my security key' : 'Unlock';
    await m.page.getByRole('button', { name, exact: true }).waitFor();
  }

  test('a wrong current passphrase changes nothing; a new passphrase replaces the old one and keeps history', async () => {
    fay = await newMember(browser);
    hal = await newMember(browser);
    key = await plugKey(fay);
    await enroll(fay, onLocalhost(await invite(up, 'Fay (field team)', ['field-team'])));
    await enroll(hal, await invite(up, 'Hal (field team)', ['field-team']));
    await expect.poll(() => fay.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain('Hal (field team)');
    await open(fay.page, /Hal \(field team\)/);
    await send(fay.page, 'Fay checking in before the change');
    await open(hal.page, /Fay \(field team\)/);
    await expect.poll(() => texts(hal.page), { timeout: 30_000 }).toContain('Fay checking in before the change');

    await openSecurity(fay);
    expect(await fay.page.getByTestId('protection-status').innerText()).toBe('This device opens with your passphrase.');
    await fay.page.getByRole('checkbox', { name: 'Choose a new passphrase' }).check();
    await fay.page.getByLabel('New passphrase', { exact: true }).fill(SECOND);
    await fay.page.getByLabel('Type the passphrase again').fill(SECOND);
    await shot(fay.page, 'security-passphrase-desktop-en');
    const records = await storedRecords(fay);
    expect(await save(fay, 'not my passphrase')).toContain('Wrong current passphrase. Nothing was changed.');
    expect(await storedRecords(fay)).toBe(records);
    await shot(fay.page, 'security-wrong-desktop-en');
    expect(await save(fay, PASSPHRASE)).toContain('Next time, unlock with your new passphrase');
    await shot(fay.page, 'security-done-desktop-en');
    // The same records, re-encrypted under a new generation (the old ones deleted in the same transaction).
    expect(await storedRecords(fay)).toBe(records);
    expect((await credentials(key)).length).toBe(0);

    await lockAndExpectUnlock(fay, false);
    await unlock(fay, PASSPHRASE);
    await expect.poll(() => fay.page.getByRole('alert').innerText(), { timeout: 30_000 }).toContain('Wrong passphrase');
    await unlock(fay, SECOND);
    await fay.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await open(fay.page, /Hal \(field team\)/);
    await expect.poll(() => texts(fay.page), { timeout: 30_000 }).toContain('Fay checking in before the change');
  });

  test('a security key added later is then needed; removed, the passphrase alone opens again', async () => {
    await openSecurity(fay);
    await fay.page.getByRole('radio', { name: 'Add a security key' }).check();
    await expect.poll(() => fay.page.getByRole('dialog').innerText()).toContain('only with this passphrase AND this key');
    await shot(fay.page, 'security-add-key-desktop-en');
    expect(await save(fay, SECOND)).toContain('only with your passphrase and this security key');
    expect((await credentials(key)).map((c) => c.rpId)).toEqual(['localhost']);
    expect(await fay.page.getByTestId('protection-status').innerText()).toContain('and your security key');

    await lockAndExpectUnlock(fay, true);
    await unlockWithKey(fay, SECOND);
    await fay.page.getByRole('navigation').waitFor({ timeout: 60_000 });

    // Removing it asks for it (the member proves they hold it), then the store opens without.
    await openSecurity(fay);
    await fay.page.getByRole('radio', { name: 'Remove my security key' }).check();
    await expect.poll(() => fay.page.getByRole('dialog').innerText()).toContain('your passphrase alone will open');
    expect(await save(fay, SECOND)).toContain('Your passphrase alone now opens PeerBubble');
    await lockAndExpectUnlock(fay, false);
    await unlock(fay, SECOND);
    await fay.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await open(fay.page, /Hal \(field team\)/);
    await expect.poll(() => texts(fay.page), { timeout: 30_000 }).toContain('Fay checking in before the change');
  });

  test('French at phone width, and the other two of language and width', async () => {
    const gus = await newMember(browser, { width: 390, height: 844, locale: 'fr-FR' });
    await plugKey(gus);
    await enroll(gus, onLocalhost(await invite(up, 'Gus (field team)', ['field-team'])));
    await openSecurity(gus);
    await gus.page.getByRole('checkbox', { name: 'Choisir une nouvelle phrase secrète' }).check();
    await gus.page.getByRole('radio', { name: 'Ajouter une clé de sécurité' }).check();
    await shot(gus.page, 'security-phone-fr');
    await gus.context.close();
    // English at phone width, French on a desktop: the same dialog, nothing cut off or untranslated.
    for (const [locale, width, height, name, who] of [
      ['en-US', 390, 844, 'security-phone-en', 'Ivy'],
      ['fr-FR', 1280, 800, 'security-desktop-fr', 'Jon'],
    ] as const) {
      const m = await newMember(browser, { width, height, locale });
      await enroll(m, onLocalhost(await invite(up, `${who} (field team)`, ['field-team'])));
      await openSecurity(m);
      await expect.poll(() => m.page.getByTestId('protection-status').innerText()).toMatch(/passphrase|phrase secrète/);
      await shot(m.page, name);
      await m.context.close();
    }
  });
});
