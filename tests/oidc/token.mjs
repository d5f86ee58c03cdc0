// Gets an access token from the provider the way an agent's CI job would: the OAuth
// client_credentials grant (RFC 6749 §4.4) with a resource indicator (RFC 8707).
// Usage: node token.mjs ISSUER CLIENT_ID CLIENT_SECRET RESOURCE   (NODE_EXTRA_CA_CERTS
// names the provider's CA). Prints the access token.
const [issuer, id, secret, resource] = process.argv.slice(2);
const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
const res = await fetch(discovery.token_endpoint, {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({
    grant_type: 'client_credentials',
    client_id: id,
    client_secret: secret,
    resource,
  }),
});
const body = await res.json();
if (!res.ok) {
  console.error(JSON.stringify(body));
  process.exit(1);
}
process.stdout.write(body.access_token);
