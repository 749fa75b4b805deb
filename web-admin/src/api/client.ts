// The admin API, typed from its OpenAPI document (src/api/openapi.json, checked against the server by
// crates/admin-api/tests/openapi.rs; schema.ts is generated from it before every type-check). The console holds
// no token: it works with the HttpOnly session cookie, and sends the session's CSRF token with every change.
import createClient, { type Middleware } from 'openapi-fetch';
import type { components, paths } from './schema';

export type Schemas = components['schemas'];
export type Bubble = Schemas['BubbleSummary'];
export type Health = Schemas['HealthSample'];
export type Member = Schemas['MemberRow'];
export type Category = Schemas['CategoryRow'];
export type Invite = Schemas['InviteRow'];
export type CreatedInvite = Schemas['CreatedInvite'];
export type AuditEvent = Schemas['AuditEvent'];
export type Session = Schemas['SessionInfo'];
export type MemberView = Schemas['MemberView'];
export type ServiceInfo = Schemas['ServiceInfo'];

let csrf = '';

/** Remembers the session's CSRF token (from GET /auth/session). */
export function setCsrf(token: string): void {
  csrf = token;
}

/** Called when the server says the session is gone, so that the console shows the sign-in page. */
let onSignedOut: (reason: string) => void = () => {};
export function whenSignedOut(handler: (reason: string) => void): void {
  onSignedOut = handler;
}

const session: Middleware = {
  onRequest({ request }) {
    if (request.method !== 'GET' && request.method !== 'HEAD' && csrf) request.headers.set('X-CSRF-Token', csrf);
    return request;
  },
  async onResponse({ response, request }) {
    if (response.status === 401 && !new URL(request.url).pathname.startsWith('/auth/')) {
      const body = (await response.clone().json().catch(() => null)) as { error?: string } | null;
      onSignedOut(body?.error ?? 'unauthorized');
    }
    return response;
  },
};

export const api = createClient<paths>({ baseUrl: window.location.origin, credentials: 'same-origin' });
api.use(session);

/** What went wrong, in a sentence the server wrote (or a network failure). */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The data of an openapi-fetch answer, or an ApiFailure with the server's own sentence. */
export function must<T>(answer: { data?: T; error?: unknown; response: Response }): T {
  if (answer.error !== undefined || answer.data === undefined) {
    const body = (answer.error ?? {}) as { error?: string; message?: string };
    throw new ApiFailure(answer.response.status, body.error ?? 'unknown', body.message ?? `HTTP ${answer.response.status}`);
  }
  return answer.data;
}

/** Like must, for answers without a body (204). */
export function ok(answer: { error?: unknown; response: Response }): void {
  if (!answer.response.ok) {
    const body = (answer.error ?? {}) as { error?: string; message?: string };
    throw new ApiFailure(answer.response.status, body.error ?? 'unknown', body.message ?? `HTTP ${answer.response.status}`);
  }
}

/** The sentence for a failure of any kind. */
export function describe(err: unknown): string {
  if (err instanceof ApiFailure) return err.message;
  if (err instanceof TypeError) return 'network';
  return err instanceof Error ? err.message : String(err);
}
