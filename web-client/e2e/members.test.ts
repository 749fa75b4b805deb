// Members in real Chromium against a real `peerbubble up`: enrollment from invite links, need-to-know, 1:1 and
// group chat both ways, masking, lock and unlock, a wrong passphrase, reload, safety numbers, contact removal,
// revocation, and screenshots of every screen at desktop and phone width in English and French.
import type { Browser, Page } from 'playwright-core';
import AxeBuilder from '@axe-core/playwright';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type Member, type Up, admin, createGroup, enroll, invite, launch, newMember, open, send, shot, startUp, texts, unlock } from './harness';

let up: Up;
let browser: Browser;
const members: Member[] = [];

beforeAll(async () => {
  up = await startUp();
  browser = await launch();
});

afterAll(async () => {
  await browser?.close();
  await up?.stop();
});

/** axe-core on the screen as it is: no serious or critical accessibility violation. */
async function accessible(page: Page): Promise<void> {
  const result = await new AxeBuilder({ page }).analyze();
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  expect(bad.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)).toEqual([]);
}

describe('members in the browser', () => {
  let alice: Member;
  let bob: Member;

  test('the enroll screen refuses a tampered link clearly', async () => {
    const m = await newMember(browser);
    await m.page.goto(`${up.web}/enroll#demo.abc%20def`);
    await expect.poll(() => m.page.getByRole('alert').first().innerText()).toContain('incomplete or was altered');
    await shot(m.page, 'enroll-bad-link-desktop-en');
    await m.context.close();
  });

  test('two members enroll and see each other by category; an outsider sees neither', async () => {
    expect(up.invites.length).toBe(3);
    alice = await newMember(browser);
    bob = await newMember(browser);
    members.push(alice, bob);
    await alice.page.goto(up.invites[0] ?? '');
    await alice.page.getByRole('heading', { name: 'Join your bubble' }).waitFor();
    await shot(alice.page, 'enroll-desktop-en');
    await accessible(alice.page);
    await enroll(alice, up.invites[0] ?? '');
    await enroll(bob, up.invites[1] ?? '');
    for (const [m, other] of [
      [alice, 'Bob (field team)'],
      [bob, 'Alice (field team)'],
    ] as const) {
      await expect.poll(() => m.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain(other);
    }
    await shot(alice.page, 'home-desktop-en');
    await accessible(alice.page);

    await admin(up, 'POST', '/api/v1/bubbles/demo/categories', { id: 'logistics', display_name: 'Logistics' });
    const dan = await newMember(browser);
    await enroll(dan, await invite(up, 'Dan (logistics)', ['logistics']));
    // A key enrolled a moment ago may be refused once (the server follows the directory every second).
    await expect.poll(() => dan.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain('Nobody is visible to you yet');
    const danNav = await dan.page.getByRole('navigation').innerText();
    expect(danNav).not.toContain('Alice');
    expect(danNav).not.toContain('Bob');
    expect(await alice.page.getByRole('navigation').innerText()).not.toContain('Dan');
    await shot(dan.page, 'home-empty-desktop-en');
    await dan.context.close();
  });

  test('they chat both ways, masked until revealed', async () => {
    await open(alice.page, /Bob \(field team\)/);
    await send(alice.page, 'Meet at the north gate at 0600');
    await open(bob.page, /Alice \(field team\)/);
    // Masked by default: the text is not in the page until revealed.
    await expect.poll(() => bob.page.getByRole('button', { name: /Hidden message/ }).count(), { timeout: 60_000 }).toBe(1);
    expect(await bob.page.content()).not.toContain('north gate');
    await shot(bob.page, 'chat-masked-desktop-en');
    expect(await texts(bob.page)).toEqual(['Meet at the north gate at 0600']);
    await shot(bob.page, 'chat-revealed-desktop-en');
    await accessible(bob.page);
    // Typing shows on the other side while the member writes.
    await bob.page.getByRole('textbox', { name: 'Write a message' }).fill('Cop');
    await expect.poll(() => alice.page.locator('.typing').innerText(), { timeout: 30_000 }).toContain('Bob (field team) is typing');
    await send(bob.page, 'Copy. Bringing the radio.');
    await expect.poll(() => texts(alice.page), { timeout: 30_000 }).toContain('Copy. Bringing the radio.');
    // Canary: what the server relays and logs never holds the text.
    const wire = [...alice.frames, ...bob.frames].join('\n');
    expect(wire.length).toBeGreaterThan(0);
    expect(wire).not.toContain('north gate');
    expect(wire).not.toContain('Bringing the radio');
    expect(up.logs.join('\n')).not.toContain('north gate');
    // Read receipts travel back.
    await expect.poll(() => alice.page.locator('.message.mine .meta').first().innerText(), { timeout: 30_000 }).toMatch(/read|delivered/);
  });

  test('safety numbers are equal on both pages', async () => {
    const read = async (page: Page) => {
      await page.getByRole('button', { name: 'Safety number' }).click();
      const digits = page.getByTestId('safety-number');
      await digits.waitFor();
      return digits.getAttribute('aria-label');
    };
    const a = await read(alice.page);
    const b = await read(bob.page);
    expect(a).toMatch(/^[0-9]{60}$/);
    expect(a).toBe(b);
    await shot(alice.page, 'safety-desktop-en');
    await accessible(alice.page);
    await alice.page.getByRole('button', { name: 'Mark as verified' }).click();
    await bob.page.getByRole('button', { name: 'Close' }).click();
    await expect.poll(() => alice.page.getByRole('navigation').innerText()).toContain('verified');
  });

  test('a wrong passphrase is refused and erases nothing; reload keeps the history; lock masks everything', async () => {
    await bob.page.reload();
    await bob.page.getByRole('heading', { name: 'Unlock PeerBubble' }).waitFor();
    await unlock(bob, 'not the passphrase at all');
    await expect.poll(() => bob.page.getByRole('alert').innerText(), { timeout: 30_000 }).toContain('Wrong passphrase');
    await shot(bob.page, 'unlock-wrong-desktop-en');
    await accessible(bob.page);
    await unlock(bob);
    await bob.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await open(bob.page, /Alice \(field team\)/);
    await expect.poll(() => texts(bob.page), { timeout: 30_000 }).toEqual(['Meet at the north gate at 0600', 'Copy. Bringing the radio.']);
    // Still talking after the reload.
    await send(alice.page, 'Still there?');
    await expect.poll(() => texts(bob.page), { timeout: 30_000 }).toContain('Still there?');

    await bob.page.getByRole('button', { name: 'Lock' }).click();
    await bob.page.getByRole('heading', { name: 'Unlock PeerBubble' }).waitFor();
    const locked = await bob.page.content();
    expect(locked).not.toContain('north gate');
    expect(locked).not.toContain('Alice');
    await unlock(bob);
    await bob.page.getByRole('navigation').waitFor({ timeout: 60_000 });
  });

  test('a message is edited in place, and the contact sees the new text', async () => {
    await open(alice.page, /Bob \(field team\)/);
    await open(bob.page, /Alice \(field team\)/);
    await send(alice.page, 'Gate code is 4411');
    await expect.poll(() => texts(bob.page), { timeout: 30_000 }).toContain('Gate code is 4411');
    await alice.page.locator('li.message.mine').last().getByRole('button', { name: 'Edit' }).click();
    const box = alice.page.getByRole('textbox', { name: 'Edit the message' });
    await box.fill('Gate code is 4412');
    await shot(alice.page, 'edit-inline-desktop-en');
    await box.press('Enter');
    await expect.poll(() => texts(bob.page), { timeout: 30_000 }).toContain('Gate code is 4412');
    expect(await texts(bob.page)).not.toContain('Gate code is 4411');
    expect(await bob.page.locator('li.message', { hasText: 'Gate code is 4412' }).innerText()).toContain('edited');
    // Disappearing messages: set on one side, shown on both; set back so that the history stays for the tests after.
    const timer = (page: Page) => page.getByRole('combobox', { name: 'Disappearing messages' });
    await timer(alice.page).selectOption('300');
    await expect.poll(() => timer(bob.page).inputValue(), { timeout: 30_000 }).toBe('300');
    expect(await timer(bob.page).locator('option:checked').innerText()).toBe('Disappear after 5 minutes');
    await timer(bob.page).selectOption('0');
    await expect.poll(() => timer(alice.page).inputValue(), { timeout: 30_000 }).toBe('0');
  });

  test('a group of three: add, remove, and the removed member reads nothing more', async () => {
    const erin = await newMember(browser);
    members.push(erin);
    await enroll(erin, await invite(up, 'Erin (field team)', ['field-team']));
    await expect.poll(() => alice.page.getByRole('navigation').innerText(), { timeout: 30_000 }).toContain('Erin');
    await createGroup(alice.page, 'North sector', [/Bob/, /Erin/], () => shot(alice.page, 'group-new-desktop-en'));
    for (const m of [bob, erin]) {
      await expect.poll(() => m.page.getByRole('navigation').innerText(), { timeout: 60_000 }).toContain('North sector');
    }
    await send(alice.page, 'Group check-in');
    for (const m of [bob, erin]) {
      await open(m.page, /North sector/);
      await expect.poll(() => texts(m.page), { timeout: 60_000 }).toContain('Group check-in');
    }
    await alice.page.getByRole('button', { name: 'Members' }).click();
    await shot(alice.page, 'group-members-desktop-en');
    const erinRow = alice.page.getByRole('dialog').locator('li', { hasText: 'Erin' });
    await erinRow.getByRole('button', { name: 'Remove' }).click();
    // Erin leaves the member list (and shows among those who can be added).
    await expect.poll(() => erinRow.getByRole('button', { name: 'Remove' }).count(), { timeout: 30_000 }).toBe(0);
    await expect.poll(() => erinRow.getByRole('button', { name: 'Add' }).count()).toBe(1);
    await alice.page.getByRole('dialog').getByRole('button', { name: 'Close' }).click();
    await send(alice.page, 'Only the two of you now');
    await expect.poll(() => texts(bob.page), { timeout: 60_000 }).toContain('Only the two of you now');
    // Erin's side: the conversation is closed and the later message never arrives.
    await new Promise((r) => setTimeout(r, 2_000));
    expect(await erin.page.content()).not.toContain('Only the two of you now');
  });

  test('removing a contact destroys the conversation on this device', async () => {
    await open(alice.page, /Bob \(field team\)/);
    await alice.page.getByRole('button', { name: 'Remove contact' }).click();
    // Asked inside the page first: Escape keeps everything, the dialog's own button removes.
    const ask = alice.page.getByRole('alertdialog', { name: 'Remove Bob (field team)?' });
    await ask.waitFor();
    await shot(alice.page, 'remove-contact-desktop-en');
    await alice.page.keyboard.press('Escape');
    expect(await ask.count()).toBe(0);
    expect(await texts(alice.page)).toContain('Meet at the north gate at 0600');
    await alice.page.getByRole('button', { name: 'Remove contact' }).click();
    await ask.getByRole('button', { name: 'Remove contact' }).click();
    await open(alice.page, /Bob \(field team\)/);
    // A new conversation is set up; the old history is gone from this device.
    await new Promise((r) => setTimeout(r, 1_000));
    expect(await texts(alice.page)).not.toContain('Meet at the north gate at 0600');
  });

  test('a revoked member is disconnected and told why', async () => {
    const list = (await admin(up, 'GET', '/api/v1/bubbles/demo/members')) as unknown as Array<Record<string, unknown>> | Record<string, unknown>;
    const rows = Array.isArray(list) ? list : ((list.members as Array<Record<string, unknown>>) ?? []);
    const bobRow = rows.find((r) => String(r.display_name).startsWith('Bob'));
    expect(bobRow).toBeDefined();
    await admin(up, 'POST', `/api/v1/bubbles/demo/members/${String(bobRow?.member ?? bobRow?.id)}/revoke`);
    await expect.poll(() => bob.page.getByRole('alert').first().innerText(), { timeout: 30_000 }).toContain('revoked');
    // Nothing can be sent any more: the composer is off.
    await expect.poll(() => bob.page.getByRole('textbox', { name: 'Write a message' }).isDisabled()).toBe(true);
    await shot(bob.page, 'revoked-desktop-en');
  });

  test('wrong passphrases in a row make the member wait, still after a reload; the right one then opens', async () => {
    const eve = await newMember(browser);
    await enroll(eve, await invite(up, 'Eve (field team)', ['field-team']));
    await eve.page.getByRole('button', { name: 'Lock' }).click();
    await eve.page.getByRole('heading', { name: 'Unlock PeerBubble' }).waitFor();
    const submit = eve.page.getByRole('button', { name: 'Unlock' });
    const waiting = eve.page.getByText(/You can try again in \d+ s/);
    // Two free tries; from the third on, 2, 4, 8 s... before the next one (kept in IndexedDB).
    for (let attempt = 1; attempt <= 5; attempt++) {
      await expect.poll(() => submit.isEnabled(), { timeout: 30_000 }).toBe(true);
      await unlock(eve, `wrong guess number ${attempt}`);
      await expect.poll(() => eve.page.getByRole('alert').innerText(), { timeout: 30_000 }).toContain('Wrong passphrase');
      if (attempt < 3) {
        await expect.poll(() => submit.isEnabled(), { timeout: 30_000 }).toBe(true);
        expect(await waiting.count()).toBe(0);
      } else {
        await waiting.waitFor();
        expect(await submit.isEnabled()).toBe(false);
      }
    }
    // The 8 s wait survives a reload: the page cannot skip it by starting over.
    await eve.page.reload();
    await eve.page.getByRole('heading', { name: 'Unlock PeerBubble' }).waitFor();
    await waiting.waitFor({ timeout: 10_000 });
    expect(await submit.isEnabled()).toBe(false);
    expect(await waiting.innerText()).toContain('Too many wrong passphrases');
    await shot(eve.page, 'unlock-wait-desktop-en');
    // Then the right passphrase opens everything, and the count starts again.
    await expect.poll(() => submit.isEnabled(), { timeout: 30_000 }).toBe(true);
    await unlock(eve);
    await eve.page.getByRole('navigation').waitFor({ timeout: 60_000 });
    await eve.page.getByRole('button', { name: 'Lock' }).click();
    await unlock(eve, 'one more wrong guess');
    await expect.poll(() => eve.page.getByRole('alert').innerText(), { timeout: 30_000 }).toContain('Wrong passphrase');
    await expect.poll(() => submit.isEnabled(), { timeout: 30_000 }).toBe(true);
    expect(await waiting.count()).toBe(0);
    await eve.context.close();
  });
});

describe('screens at phone width and in French', () => {
  test('enroll, home and chat in French on a phone', async () => {
    const link = await invite(up, 'Frédéric (terrain)', ['field-team']);
    const m = await newMember(browser, { width: 390, height: 844, locale: 'fr-FR' });
    await m.page.goto(link);
    await m.page.getByRole('heading', { name: 'Rejoindre votre bulle' }).waitFor();
    await shot(m.page, 'enroll-phone-fr');
    await enroll(m, link);
    await shot(m.page, 'home-phone-fr');
    await open(m.page, /Alice/);
    await expect.poll(() => m.page.getByRole('button', { name: 'Retour aux contacts' }).isVisible()).toBe(true);
    await shot(m.page, 'chat-phone-fr');
    await m.page.getByRole('button', { name: 'Verrouiller' }).click();
    await m.page.getByRole('heading', { name: 'Déverrouiller PeerBubble' }).waitFor();
    await shot(m.page, 'unlock-phone-fr');
    await m.context.close();
  });

  test('English on a phone, French on a desktop', async () => {
    const phone = await newMember(browser, { width: 390, height: 844 });
    await phone.page.goto(await invite(up, 'Gaby (field team)', ['field-team']));
    await phone.page.getByRole('heading', { name: 'Join your bubble' }).waitFor();
    await shot(phone.page, 'enroll-phone-en');
    await enroll(phone, phone.page.url());
    await shot(phone.page, 'home-phone-en');
    await open(phone.page, /Alice/);
    await expect.poll(() => phone.page.getByRole('button', { name: 'Back to contacts' }).isVisible()).toBe(true);
    // Every action of the conversation's header is on screen (they wrap at phone width, never off the edge).
    // (They show once the conversation is set up: waited for, as the member does.)
    for (const name of ['Call', 'Video call']) {
      const button = phone.page.getByRole('button', { name, exact: true });
      await button.waitFor({ timeout: 60_000 });
      const box = await button.boundingBox();
      expect(box && box.x >= 0 && box.x + box.width <= 390, `${name} at ${JSON.stringify(box)}`).toBe(true);
    }
    await shot(phone.page, 'chat-phone-en');
    await phone.context.close();

    const desk = await newMember(browser, { locale: 'fr-FR' });
    await enroll(desk, await invite(up, 'Hélène (terrain)', ['field-team']));
    await shot(desk.page, 'home-desktop-fr');
    await open(desk.page, /Alice/);
    await shot(desk.page, 'chat-desktop-fr');
    await desk.context.close();
  });
});
