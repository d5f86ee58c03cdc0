// A real OpenID provider (the certified `oidc-provider`) for the gateway's token tests and
// the Docker Compose getting-started path. It issues RFC 9068 JWT access tokens
// (`typ: at+jwt`) to `client_credentials` clients.
//
// Environment:
//   PORT        port to listen on (default 4000)
//   ISSUER      the issuer URL (default https://127.0.0.1:PORT, or http:// without TLS_CERT)
//   TLS_CERT, TLS_KEY  PEM files: serve HTTPS (what a real deployment does)
//   KEYS        a JSON file of private JWKs; created with new keys when it does not exist, so
//               a test can rotate keys by removing it and restarting the provider, and sign
//               tokens of its own (forge.mjs) with the same keys
//   ALG         signing algorithm of access tokens: RS256 (default), ES256 or EdDSA
//   AUDIENCE    the resource (`aud`) tokens are for (default "urn:portcullis")
//   TTL         access token lifetime in seconds (default 600)
//   CLIENTS     JSON: [{"client_id": "...", "client_secret": "...", "groups": [...], "pad": N}]
//               `groups` becomes the token's groups claim; `pad` adds a claim of N bytes (a
//               deliberately large token). Default: one client agent-ci / agent-ci-secret.
//   HOST        address to listen on (default 127.0.0.1)
//   READY_FILE  written once the provider listens (the tests wait for it)
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 4000);
const tls = process.env.TLS_CERT && process.env.TLS_KEY;
const issuer = process.env.ISSUER || `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
const alg = process.env.ALG || 'RS256';
const audience = process.env.AUDIENCE || 'urn:portcullis';
const ttl = Number(process.env.TTL || 600);
const clients = JSON.parse(
  process.env.CLIENTS ||
    '[{"client_id":"agent-ci","client_secret":"agent-ci-secret","groups":["db-writers"]}]',
);

async function keys() {
  const file = process.env.KEYS;
  if (file && fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const stamp = Date.now().toString(36);
  const out = [];
  for (const [a, opts] of [
    ['RS256', { modulusLength: 2048 }],
    ['ES256', {}],
    ['EdDSA', { crv: 'Ed25519' }],
  ]) {
    const { privateKey } = await jose.generateKeyPair(a, { ...opts, extractable: true });
    const jwk = await jose.exportJWK(privateKey);
    out.push({ ...jwk, alg: a, use: 'sig', kid: `${a.toLowerCase()}-${stamp}` });
  }
  const set = { keys: out };
  if (file) fs.writeFileSync(file, JSON.stringify(set), { mode: 0o600 });
  return set;
}

const byClient = new Map(clients.map((c) => [c.client_id, c]));

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
  })),
  jwks: await keys(),
  cookies: { keys: [Math.random().toString(36)] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== audience) throw new Error(`unknown resource ${resource}`);
        return {
          scope: 'db:read db:write',
          audience,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg } },
        };
      },
    },
  },
  extraTokenClaims: (_ctx, token) => {
    const c = byClient.get(token.clientId);
    if (!c) return undefined;
    const extra = {};
    if (c.groups) extra.groups = c.groups;
    if (c.pad) extra.pad = 'x'.repeat(c.pad);
    return extra;
  },
});

const server = tls
  ? https.createServer(
      { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) },
      provider.callback(),
    )
  : http.createServer(provider.callback());
server.listen(port, process.env.HOST || '127.0.0.1', () => {
  if (process.env.READY_FILE) fs.writeFileSync(process.env.READY_FILE, issuer);
  console.log(`oidc-provider listening at ${issuer}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
