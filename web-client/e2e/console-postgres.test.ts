// The console on PostgreSQL (what a ministry runs in production), in Chromium against a real `peerbubble up`:
// sign in, invite, a member enrolls in the web client and shows online, revoke, the audit export; then the
// database stops under the console: the page says the directory is unavailable and to retry, nothing typed or
// stored is lost, and "Try again" works once PostgreSQL is back. Skipped (with a message) where no local
// PostgreSQL answers, as the admin API's own PostgreSQL tests are.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type Member, type Up, enroll, launch, newMember, startUp } from './harness';

const ADMIN_URL = process.env.PEERBUBBLE_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const database = `pb_console_${randomBytes(6).toString('hex')}`;

function psql(sql: string): boolean {
  try {
    execFileSync('psql', [ADMIN_URL, '-v', 'ON_ERROR_STOP=1', '-q', '-c', sql], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
}

/** The machine's own cluster, which this test may stop and start (never someone else's server). */
function localCluster(): string | null {
  if (process.env.PEERBUBBLE_TEST_POSTGRES || !existsSync('/etc/postgresql')) return null;
  return readdirSync('/etc/postgresql')[0] ?? null;
}

function cluster(version: string, action: 'stop' | 'start'): void {
  execFileSync('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', action, ...(action === 'stop' ? ['--mode', 'fast'] : [])], { stdio: 'pipe' });
}

const available = psql(`CREATE DATABASE ${database}`);
if (!available) console.warn(`SKIPPED: no PostgreSQL at ${ADMIN_URL} (set PEERBUBBLE_TEST_POSTGRES)`);

let up: Up;
let browser: Browser;
const people: Member[] = [];

beforeAll(async () => {
  if (!available) return;
  up = await startUp(['--database-url', ADMIN_URL.replace(/\/[^/]*$/, `/${database}`)]);
  browser = await launch();
});

afterAll(async () => {
  for (const m of people) await m.context.close();
  await browser?.close();
  await up?.stop();
  if (available) psql(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
});

describe.skipIf(!available)('the console on PostgreSQL', () => {
  let page: Page;

  test('invite, enroll in the web client, see online, revoke, export the trail', async () => {
    const admin = await newMember(browser);
    people.push(admin);
    page = admin.page;
    await page.goto(`${up.web}/admin/`);
    await page.getByLabel('Admin or API token').fill(up.token);
    await page.getByRole('button', { name: 'Sign in with this token' }).click();
    await page.getByRole('link', { name: 'Demo bubble' }).click();
    await page.getByRole('link', { name: 'Invites' }).click();
    await page.getByLabel('Name as others will see it').fill('Selma Okafor');
    await page.getByRole('group', { name: 'Categories' }).getByLabel('Field team').check();
    await page.getByRole('button', { name: 'Make invite', exact: true }).click();
    const link = (await page.locator('li[data-invite="Selma Okafor"] .link-text').innerText()).trim();
    const selma = await newMember(browser);
    people.push(selma);
    await enroll(selma, link);
    await page.getByRole('link', { name: 'Members' }).click();
    const row = page.locator('tr[data-member="Selma Okafor"]');
    await expect.poll(() => row.getByText('Online').count(), { timeout: 30_000 }).toBe(1);
    await row.getByRole('button', { name: 'Revoke' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
    await selma.page.getByText('Your access to this bubble was revoked by its administrator').waitFor({ timeout: 10_000 });
    await expect.poll(() => row.getByText('Revoked').count()).toBe(1);
    const csv = await (await page.request.get(`${up.web}/api/v1/audit.csv?action=member.`)).text();
    expect(csv).toContain('member.enrolled');
    expect(csv).toContain('member.revoked');
  });

  test('a database outage says what happened and loses nothing; the console recovers', async () => {
    const version = localCluster();
    if (!version) {
      console.warn('SKIPPED: no local PostgreSQL cluster to stop and start');
      return;
    }
    await page.getByRole('link', { name: 'Invites' }).click();
    await page.getByRole('heading', { name: 'All invites' }).waitFor();
    cluster(version, 'stop');
    try {
      await page.getByRole('link', { name: 'Members' }).click();
      await page.getByRole('alert').filter({ hasText: 'the directory is unavailable; retry shortly' }).waitFor({ timeout: 30_000 });
      expect(await page.getByRole('button', { name: 'Try again' }).count()).toBeGreaterThan(0);
      // Still signed in: an outage is not a sign-out.
      expect(await page.getByRole('heading', { name: 'Sign in to the console' }).count()).toBe(0);
    } finally {
      cluster(version, 'start');
    }
    // Nobody presses "Try again": every part of the page recovers on its own once the database is back.
    await expect
      .poll(
        async () => {
          const revoked = await page.locator('tr[data-member="Selma Okafor"]').getByText('Revoked').count();
          const alerts = await page.getByRole('alert').count();
          return { revoked, alerts };
        },
        { timeout: 60_000, interval: 1_000 },
      )
      .toEqual({ revoked: 1, alerts: 0 });
  });
});
