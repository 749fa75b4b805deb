// IndexedDB for the worker: the key store's encrypted records, the device key (a non-extractable WebCrypto
// AES-GCM key wrapping the 32-byte device segment), the unlock back-off and, when the member added one, which
// security key opens the store (its credential id and PRF input; the secret stays in the key). Nothing here is
// readable without the member's passphrase AND this browser profile's device key (AND the security key).

import type { SecurityKeyRef } from '../protocol';

const DB_NAME = 'peerbubble';
const DB_VERSION = 1;
const RECORDS = 'records';
const DEVICE = 'device';
const META = 'meta';

export interface DeviceEntry {
  key: CryptoKey;
  iv: Uint8Array<ArrayBuffer>;
  wrapped: Uint8Array<ArrayBuffer>;
}

export interface Backoff {
  failures: number;
  retryAt: number;
}

function promised<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error ?? new Error('IndexedDB request failed'));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction failed'));
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

export async function openDb(): Promise<IDBDatabase> {
  const request = indexedDB.open(DB_NAME, DB_VERSION);
  request.onupgradeneeded = () => {
    const db = request.result;
    for (const name of [RECORDS, DEVICE, META]) {
      if (!db.objectStoreNames.contains(name)) db.createObjectStore(name);
    }
  };
  return promised(request);
}

export async function readDevice(db: IDBDatabase): Promise<DeviceEntry | undefined> {
  const tx = db.transaction(DEVICE, 'readonly');
  return (await promised(tx.objectStore(DEVICE).get('device'))) as DeviceEntry | undefined;
}

export async function readRecords(db: IDBDatabase): Promise<Array<[string, Uint8Array]>> {
  const tx = db.transaction(RECORDS, 'readonly');
  const store = tx.objectStore(RECORDS);
  const [keys, values] = await Promise.all([promised(store.getAllKeys()), promised(store.getAll())]);
  return keys.map((k, i) => [String(k), values[i] as Uint8Array]);
}

/** Writes the records a step changed, all or none (one transaction). */
export async function writeRecords(db: IDBDatabase, writes: Array<[string, Uint8Array | undefined]>): Promise<void> {
  if (writes.length === 0) return;
  const tx = db.transaction(RECORDS, 'readwrite');
  const store = tx.objectStore(RECORDS);
  for (const [name, value] of writes) {
    if (value === undefined) store.delete(name);
    else store.put(value, name);
  }
  await done(tx);
}

/** The first save of a new member: device key and every record in one transaction. */
export async function createAccount(
  db: IDBDatabase,
  device: DeviceEntry,
  writes: Array<[string, Uint8Array | undefined]>,
  bubble: string,
  securityKey: SecurityKeyRef | null,
): Promise<void> {
  const tx = db.transaction([RECORDS, DEVICE, META], 'readwrite');
  tx.objectStore(RECORDS).clear();
  for (const [name, value] of writes) {
    if (value !== undefined) tx.objectStore(RECORDS).put(value, name);
  }
  tx.objectStore(DEVICE).put(device, 'device');
  tx.objectStore(META).put({ failures: 0, retryAt: 0 } satisfies Backoff, 'backoff');
  tx.objectStore(META).put(bubble, 'bubble');
  if (securityKey) tx.objectStore(META).put({ credential: securityKey.credential, salt: securityKey.salt } satisfies SecurityKeyRef, 'securityKey');
  else tx.objectStore(META).delete('securityKey');
  await done(tx);
}

/**
 * A change of passphrase or security key: the re-encrypted records and which security key now opens the store
 * (`null`: none), in one transaction, so the store and the key it asks for never disagree.
 */
export async function writeProtection(
  db: IDBDatabase,
  writes: Array<[string, Uint8Array | undefined]>,
  securityKey: SecurityKeyRef | null,
): Promise<void> {
  const tx = db.transaction([RECORDS, META], 'readwrite');
  const records = tx.objectStore(RECORDS);
  for (const [name, value] of writes) {
    if (value === undefined) records.delete(name);
    else records.put(value, name);
  }
  if (securityKey) tx.objectStore(META).put({ credential: securityKey.credential, salt: securityKey.salt } satisfies SecurityKeyRef, 'securityKey');
  else tx.objectStore(META).delete('securityKey');
  tx.objectStore(META).put({ failures: 0, retryAt: 0 } satisfies Backoff, 'backoff');
  await done(tx);
}

/** The security key this device's key store needs, if the member added one at enrollment. */
export async function readSecurityKey(db: IDBDatabase): Promise<SecurityKeyRef | null> {
  const tx = db.transaction(META, 'readonly');
  const value = (await promised(tx.objectStore(META).get('securityKey'))) as unknown;
  if (typeof value !== 'object' || value === null) return null;
  const { credential, salt } = value as Record<string, unknown>;
  return credential instanceof Uint8Array && salt instanceof Uint8Array ? { credential, salt } : null;
}

export async function readBackoff(db: IDBDatabase): Promise<Backoff> {
  const tx = db.transaction(META, 'readonly');
  const value = (await promised(tx.objectStore(META).get('backoff'))) as Backoff | undefined;
  return value ?? { failures: 0, retryAt: 0 };
}

/** The bubble this device is enrolled in (public; shown on the unlock screen). */
export async function readAccountBubble(db: IDBDatabase): Promise<string> {
  const tx = db.transaction(META, 'readonly');
  const value = (await promised(tx.objectStore(META).get('bubble'))) as unknown;
  return typeof value === 'string' ? value : '';
}

export async function writeBackoff(db: IDBDatabase, backoff: Backoff): Promise<void> {
  const tx = db.transaction(META, 'readwrite');
  tx.objectStore(META).put(backoff, 'backoff');
  await done(tx);
}

/** A new device key (never extractable) and the device segment it wraps; the caller zeroes `secret`. */
export async function newDevice(): Promise<{ entry: DeviceEntry; secret: Uint8Array }> {
  const key = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
  const secret = crypto.getRandomValues(new Uint8Array(32));
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const wrapped = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, key, secret));
  return { entry: { key, iv, wrapped }, secret };
}

export async function unwrapDevice(entry: DeviceEntry): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: entry.iv }, entry.key, entry.wrapped));
}

/** One more wrong passphrase after `backoff`: the back-off grows and is kept; returns when to try again. */
export async function countFailure(db: IDBDatabase, backoff: Backoff): Promise<number> {
  const failures = backoff.failures + 1;
  const retryAt = Date.now() + backoffSeconds(failures) * 1000;
  await writeBackoff(db, { failures, retryAt });
  return retryAt;
}

/** Seconds to wait before the next unlock attempt after `failures` wrong passphrases in a row. */
export function backoffSeconds(failures: number): number {
  return failures < 3 ? 0 : Math.min(2 ** (failures - 2), 300);
}
