// A security key (WebAuthn authenticator with the PRF extension, CTAP2 hmac-secret underneath) as the key store's
// possession segment. WebAuthn is window-only, so the ceremony runs on the page; its one output, 32 bytes that
// only the key can compute from our salt, is handed to the worker (transferred, not copied) and zeroed there.
//
// The credential is not used to authenticate to anybody: there is no server-side verification, the challenge is
// random and thrown away. What matters is that the same key, asked the same question, gives the same answer, so
// both ceremonies use the same user-verification setting ('discouraged': an authenticator that does verify the
// user anyway does it every time), and the secret always comes from a `get`, never from the creation ceremony.

import type { NewSecurityKey, SecurityKeyRef } from './protocol';

/** Why a security key could not be used (keys of the `securityKey.*` translations). */
export type SecurityKeyProblem = 'unsupported' | 'noPrf' | 'cancelled' | 'failed';

export class SecurityKeyError extends Error {
  constructor(readonly problem: SecurityKeyProblem, detail?: string) {
    super(detail ? `${problem}: ${detail}` : problem);
  }
}

const TIMEOUT_MS = 60_000;

interface PrfOutputs {
  enabled?: boolean;
  results?: { first?: ArrayBuffer | ArrayBufferView };
}

/**
 * Whether this page can use a security key at all: WebAuthn in a secure context, on a host name (a relying party
 * is a domain: a page opened by IP address cannot register a credential), with no certificate error (browsers
 * refuse WebAuthn on a page whose certificate they do not trust).
 */
export function securityKeyPossible(): boolean {
  if (!window.isSecureContext || typeof PublicKeyCredential === 'undefined' || !navigator.credentials) return false;
  const host = location.hostname;
  const ipv4 = /^\d{1,3}(\.\d{1,3}){3}$/.test(host);
  return host !== '' && !ipv4 && !host.startsWith('[') && !host.includes(':');
}

/** Zeroes a secret still on the page; one handed to the worker (transferred) is already gone from here. */
export function wipe(secret: Uint8Array | undefined): void {
  if (!secret || secret.byteLength === 0) return; // a transferred buffer is detached, with no bytes left
  secret.fill(0);
}

function random(bytes: number): Uint8Array<ArrayBuffer> {
  return crypto.getRandomValues(new Uint8Array(bytes));
}

function problemOf(err: unknown): SecurityKeyError {
  if (err instanceof SecurityKeyError) return err;
  if (err instanceof DOMException && (err.name === 'NotAllowedError' || err.name === 'AbortError')) {
    return new SecurityKeyError('cancelled', err.message);
  }
  if (err instanceof DOMException && (err.name === 'SecurityError' || err.name === 'NotSupportedError')) {
    return new SecurityKeyError('unsupported', err.message);
  }
  return new SecurityKeyError('failed', err instanceof Error ? err.message : String(err));
}

/** Asks the key for its PRF output on `salt` (the member touches it). */
async function evaluate(key: SecurityKeyRef): Promise<Uint8Array> {
  const options = {
    challenge: random(32),
    allowCredentials: [{ type: 'public-key', id: key.credential.slice() }],
    userVerification: 'discouraged',
    timeout: TIMEOUT_MS,
    extensions: { prf: { eval: { first: key.salt.slice() } } },
  } as unknown as PublicKeyCredentialRequestOptions;
  const credential = (await navigator.credentials.get({ publicKey: options })) as PublicKeyCredential | null;
  if (!credential) throw new SecurityKeyError('cancelled');
  const prf = (credential.getClientExtensionResults() as { prf?: PrfOutputs }).prf;
  const first = prf?.results?.first;
  if (!first) throw new SecurityKeyError('noPrf');
  const view = first instanceof ArrayBuffer ? new Uint8Array(first) : new Uint8Array(first.buffer, first.byteOffset, first.byteLength);
  if (view.byteLength !== 32) throw new SecurityKeyError('noPrf', `${view.byteLength} bytes`);
  const secret = new Uint8Array(view);
  view.fill(0);
  return secret;
}

/**
 * Registers a new credential on the member's security key and reads its PRF output once. `label` names the
 * credential in the key's own list (the bubble and the member's name; nothing secret).
 */
export async function addSecurityKey(label: string): Promise<NewSecurityKey> {
  if (!securityKeyPossible()) throw new SecurityKeyError('unsupported');
  try {
    const salt = random(32);
    const options = {
      rp: { name: 'PeerBubble' },
      user: { id: random(16), name: label, displayName: label },
      challenge: random(32),
      pubKeyCredParams: [
        { type: 'public-key', alg: -8 },
        { type: 'public-key', alg: -7 },
        { type: 'public-key', alg: -257 },
      ],
      authenticatorSelection: { userVerification: 'discouraged', residentKey: 'discouraged' },
      attestation: 'none',
      timeout: TIMEOUT_MS,
      extensions: { prf: {} },
    } as unknown as PublicKeyCredentialCreationOptions;
    const created = (await navigator.credentials.create({ publicKey: options })) as PublicKeyCredential | null;
    if (!created) throw new SecurityKeyError('cancelled');
    const prf = (created.getClientExtensionResults() as { prf?: PrfOutputs }).prf;
    if (prf?.enabled !== true) throw new SecurityKeyError('noPrf');
    const credential = new Uint8Array(created.rawId);
    const secret = await evaluate({ credential, salt });
    return { credential, salt, secret };
  } catch (err) {
    throw problemOf(err);
  }
}

/** The PRF output of the security key this device's key store was made with (the member touches it). */
export async function securityKeySecret(key: SecurityKeyRef): Promise<Uint8Array> {
  if (!securityKeyPossible()) throw new SecurityKeyError('unsupported');
  try {
    return await evaluate(key);
  } catch (err) {
    throw problemOf(err);
  }
}
