// Signs tokens the provider would never issue, for the gateway's refusal tests. Reads one
// JSON request on stdin and prints the token:
//   {"keys": "<KEYS file of provider.mjs>", "alg": "RS256", "kid": "...", "typ": "at+jwt",
//    "claims": {...}, "mode": "sign" | "none" | "hmac-public" | "tamper" | "foreign"}
// - sign:        a valid signature by the provider's key (claims as given: expired, wrong
//                audience, not yet valid, ...)
// - none:        `alg: none`, no signature
// - hmac-public: HS256 keyed with the provider's public key (the algorithm-confusion attack)
// - tamper:      a valid token whose payload is changed after signing
// - foreign:     signed by a fresh key that the provider never published, under `kid`
import fs from 'node:fs';
import crypto from 'node:crypto';
import * as jose from 'jose';

const req = JSON.parse(fs.readFileSync(0, 'utf8'));
const set = JSON.parse(fs.readFileSync(req.keys, 'utf8'));
const alg = req.alg || 'RS256';
const jwk = set.keys.find((k) => k.alg === alg && (!req.kid || k.kid === req.kid));
const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
const header = { alg, typ: req.typ ?? 'at+jwt', kid: req.kid || jwk.kid };
if (req.typ === null) delete header.typ;

async function sign(claims, key, hdr) {
  return new jose.SignJWT(claims).setProtectedHeader(hdr).sign(key);
}

let token;
switch (req.mode || 'sign') {
  case 'sign':
    token = await sign(req.claims, await jose.importJWK(jwk, alg), header);
    break;
  case 'none':
    token = `${b64({ alg: 'none', typ: header.typ, kid: header.kid })}.${b64(req.claims)}.`;
    break;
  case 'hmac-public': {
    const { d, p, q, dp, dq, qi, ...pub } = jwk;
    const pem = crypto.createPublicKey({ key: pub, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    const input = `${b64({ ...header, alg: 'HS256' })}.${b64(req.claims)}`;
    const mac = crypto.createHmac('sha256', pem).update(input).digest('base64url');
    token = `${input}.${mac}`;
    break;
  }
  case 'tamper': {
    const good = await sign(req.claims, await jose.importJWK(jwk, alg), header);
    const [h, , s] = good.split('.');
    token = `${h}.${b64({ ...req.claims, ...req.tampered })}.${s}`;
    break;
  }
  case 'foreign': {
    const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
    token = await sign(req.claims, privateKey, header);
    break;
  }
  default:
    throw new Error(`unknown mode ${req.mode}`);
}
process.stdout.write(token);
