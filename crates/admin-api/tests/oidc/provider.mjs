// Loopback OpenID Connect provider for PeerBubble admin-api integration tests.
//
// Wraps the certified `oidc-provider` package. Binds 127.0.0.1 only; prints exactly one line to stdout,
// `listening http://127.0.0.1:<port>`, which is also the issuer. Everything else goes to stderr.
//
// Environment:
//   PORT           port to bind (0 or unset = ephemeral)
//   CLIENT_ID      the one confidential client (authorization_code, response_type code, PKCE S256 required;
//   CLIENT_SECRET  /token takes client_secret_basic or client_secret_post)
//   REDIRECT_URI
//   ACCOUNTS       JSON object login -> array of role strings, e.g. {"alice":["admin"],"nobody":[]}
//
// Test control (loopback only): POST /__test/mode {"mode": "..."} -> 204; see README.md.

import * as http from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';

import Provider from 'oidc-provider';
import { CompactSign, exportJWK, generateKeyPair } from 'jose';

// oidc-provider prints NOTICEs with console.info (stdout); keep stdout for the listening line only.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback === undefined) {
      console.error(`provider.mjs: environment variable ${name} is required`);
      process.exit(2);
    }
    return fallback;
  }
  return v;
}

const PORT = Number.parseInt(env('PORT', '0'), 10);
const CLIENT_ID = env('CLIENT_ID');
const CLIENT_SECRET = env('CLIENT_SECRET');
const REDIRECT_URI = env('REDIRECT_URI');
let ACCOUNTS;
try {
  ACCOUNTS = JSON.parse(env('ACCOUNTS', '{}'));
  if (ACCOUNTS === null || typeof ACCOUNTS !== 'object' || Array.isArray(ACCOUNTS)) throw new Error('not an object');
} catch (e) {
  console.error(`provider.mjs: ACCOUNTS must be a JSON object login -> [roles]: ${e.message}`);
  process.exit(2);
}

function rolesOf(login) {
  const r = Object.prototype.hasOwnProperty.call(ACCOUNTS, login) ? ACCOUNTS[login] : [];
  return Array.isArray(r) ? r.map(String) : [];
}

// Signing key, generated per run; the private half stays here for the re-signing test modes.
const ALG = 'RS256';
const KID = `test-${randomUUID()}`;
const { privateKey } = await generateKeyPair(ALG, { extractable: true });
const privateJwk = { ...(await exportJWK(privateKey)), kid: KID, alg: ALG, use: 'sig' };

const MODES = new Set(['normal', 'wrong-issuer', 'wrong-audience', 'expired', 'tampered', 'wrong-nonce', 'no-nonce']);
let mode = 'normal';

const b64uJson = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
const parseB64uJson = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));

async function rewriteIdToken(idToken) {
  const [h, p, s] = idToken.split('.');
  const header = parseB64uJson(h);
  const payload = parseB64uJson(p);
  const now = Math.floor(Date.now() / 1000);
  switch (mode) {
    case 'tampered': {
      // Payload changed, signature kept: the signature no longer verifies.
      payload.peerbubble_roles = ['admin'];
      payload.name = `${payload.name ?? payload.sub} (tampered)`;
      return `${h}.${b64uJson(payload)}.${s}`;
    }
    case 'wrong-issuer': payload.iss = 'http://127.0.0.1:1/evil'; break;
    case 'wrong-audience': payload.aud = 'someone-else'; break;
    case 'expired': payload.iat = now - 7200; payload.exp = now - 3600; break;
    case 'wrong-nonce': payload.nonce = randomBytes(16).toString('base64url'); break;
    case 'no-nonce': delete payload.nonce; break;
    default: return idToken;
  }
  // Re-sign with the provider's own key and the original protected header (same alg, kid, typ).
  return new CompactSign(Buffer.from(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(privateKey);
}

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// Bind first so that an ephemeral port is known before the issuer is fixed.
let handler = (_req, res) => { res.statusCode = 503; res.end(); };
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, '127.0.0.1', resolve);
});
const { port } = server.address();
const ISSUER = `http://127.0.0.1:${port}`;

const provider = new Provider(ISSUER, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    // oidc-provider 9 accepts client_secret_post from a client registered for client_secret_basic (and
    // vice versa): both carry the same secret, so /token takes either.
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: ALG,
  }],
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  jwks: { keys: [privateJwk] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  // Put the scope-mapped claims into the ID token itself, not only into userinfo.
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub', 'name', 'peerbubble_roles'],
    profile: ['name'],
    peerbubble: ['peerbubble_roles'],
  },
  scopes: ['openid', 'profile', 'peerbubble'],
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, name: sub, peerbubble_roles: rolesOf(sub) };
      },
    };
  },
  // Skip consent: every login gets a grant for exactly what the request asks for.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const existing = await ctx.oidc.provider.Grant.find(grantId);
      if (existing) return existing;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' ') || 'openid');
    const claims = ctx.oidc.requestParamClaims;
    if (claims && claims.size) grant.addOIDCClaims([...claims]);
    await grant.save();
    return grant;
  },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    userinfo: { enabled: true },
    revocation: { enabled: false },
    introspection: { enabled: false },
  },
  ttl: {
    AuthorizationCode: 120,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
    AccessToken: 600,
    IdToken: 3600, // the default value, set to silence the "default ttl.IdToken" notice
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
});

provider.on('server_error', (_ctx, err) => console.error('server_error', err));
provider.on('grant.error', (_ctx, err) => console.error('grant.error', err.name, err.message, err.error_description ?? ''));
provider.on('authorization.error', (_ctx, err) => console.error('authorization.error', err.name, err.message, err.error_description ?? ''));

// Minimal request log + test control + token response rewriting.
provider.use(async (ctx, next) => {
  const started = Date.now();
  try {
    if (ctx.path === '/__test/mode') {
      if (ctx.method !== 'POST') {
        ctx.status = 405;
        return;
      }
      let m;
      try {
        m = JSON.parse(await readBody(ctx.req)).mode;
      } catch {
        m = undefined;
      }
      if (!MODES.has(m)) {
        ctx.status = 400;
        ctx.body = { error: 'invalid_mode', modes: [...MODES] };
        return;
      }
      mode = m;
      console.error(`test mode -> ${mode}`);
      ctx.status = 204;
      return;
    }

    await next();

    if (mode !== 'normal' && ctx.path === '/token' && ctx.status === 200
        && ctx.body && typeof ctx.body === 'object' && typeof ctx.body.id_token === 'string') {
      ctx.body = { ...ctx.body, id_token: await rewriteIdToken(ctx.body.id_token) };
    }
  } finally {
    console.error(`${ctx.method} ${ctx.path} -> ${ctx.status} (${Date.now() - started}ms)${mode !== 'normal' ? ` [mode ${mode}]` : ''}`);
  }
});

handler = provider.callback();

process.stdout.write(`listening ${ISSUER}\n`);

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.error(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
