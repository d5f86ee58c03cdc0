//! What a login costs the gateway, by credential, and what the credential's expiry check
//! costs each statement.
//!
//! `cargo bench -p portcullis --bench auth` (add `-- --quick` for a fast look). Thread CPU
//! time, as in `mask`:
//! - `login/scram`: the server's side of a SCRAM-SHA-256 exchange (the client's salted
//!   password is cached, as a pooled driver's would be; the server never runs PBKDF2).
//! - `login/token-*`: checking an access token with the issuer's keys cached (signature,
//!   claims, roles), per algorithm. The keys come from `openssl`, as a provider's would.
//! - `statement/*`: one simple `Query` through the relay core with and without an expiry
//!   set on the session.

use std::hint::black_box;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::{BufMut, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use portcullis::auth::oidc::OidcConfig;
use portcullis::auth::oidc::jwt::{self, Key};
use portcullis::auth::{SaltedCache, ScramClient, ScramServer, Verifier};
use portcullis::session::hooks::PassThrough;
use portcullis::session::relay::{Relay, RelayLimits};

mod common;
use common::{CpuTime, config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn scram(c: &mut Criterion<CpuTime>) {
    let verifier = Verifier::generate("agent-secret", 4096);
    let cache = SaltedCache::default();
    c.bench_function("login/scram", |b| {
        b.iter(|| {
            let mut client = ScramClient::new("agent-secret");
            let mut server = ScramServer::new(verifier.clone());
            let first = server.client_first(&client.client_first()).unwrap();
            let last = client.server_first(&first, &cache).unwrap();
            let fin = server.client_final(&last).unwrap();
            client.server_final(&fin).unwrap();
        })
    });
}

/// A PKCS#1 RSA key pair from openssl: (private DER, public DER).
fn rsa_keys() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let k = key.to_str().unwrap();
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        k,
    ]);
    let private = run(&["rsa", "-in", k, "-traditional", "-outform", "DER"]);
    let public = run(&["rsa", "-in", k, "-RSAPublicKey_out", "-outform", "DER"]);
    (private, public)
}

fn token(alg: jsonwebtoken::Algorithm, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.typ = Some("at+jwt".into());
    header.kid = Some("k1".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://idp.example", "aud": "urn:portcullis", "sub": "ci-agent",
        "iat": now, "exp": now + 3600, "groups": ["db-writers", "staff"],
        "scope": "db:read db:write",
    });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn tokens(c: &mut Criterion<CpuTime>) {
    let cfg: OidcConfig = toml::from_str(
        "issuer = \"https://idp.example\"\naudiences = [\"urn:portcullis\"]\nrole_map = { \"db-writers\" = \"writer\" }\n",
    )
    .unwrap();
    let (rsa_private, rsa_public) = rsa_keys();
    let ed =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let ed_pair = ring::signature::Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap();
    use ring::signature::KeyPair;
    let ed_public = B64URL.encode(ed_pair.public_key().as_ref());
    let es = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let es_pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        es.as_ref(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let point = es_pair.public_key().as_ref();
    let (x, y) = (B64URL.encode(&point[1..33]), B64URL.encode(&point[33..65]));
    use jsonwebtoken::Algorithm as A;
    let cases = [
        (
            "RS256",
            A::RS256,
            EncodingKey::from_rsa_der(&rsa_private),
            DecodingKey::from_rsa_der(&rsa_public),
        ),
        (
            "ES256",
            A::ES256,
            EncodingKey::from_ec_der(es.as_ref()),
            DecodingKey::from_ec_components(&x, &y).unwrap(),
        ),
        (
            "EdDSA",
            A::EdDSA,
            EncodingKey::from_ed_der(ed.as_ref()),
            DecodingKey::from_ed_components(&ed_public).unwrap(),
        ),
    ];
    for (name, alg, enc, dec) in cases {
        let t = token(alg, &enc);
        let key = Key {
            kid: Some("k1".into()),
            alg: Some(alg),
            key: dec,
        };
        let keys = [key];
        let seen = jwt::peek(&t).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let id = jwt::verify(&t, &seen, &keys[0], &cfg, now, "bench").unwrap();
        assert_eq!(id.roles, ["writer"]);
        c.bench_function(&format!("login/token-{name}"), |b| {
            b.iter(|| {
                let seen = jwt::peek(black_box(&t)).unwrap();
                let key = jwt::find(&keys, seen.kid.as_deref()).unwrap();
                black_box(jwt::verify(&t, &seen, key, &cfg, now, "bench").unwrap());
            })
        });
    }
}

fn statement(c: &mut Criterion<CpuTime>) {
    let mut query = BytesMut::new();
    query.put_u8(b'Q');
    let sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = 4711\0";
    query.put_i32(4 + sql.len() as i32);
    query.put_slice(sql);
    let far = portcullis::approvals::model::now_ms() + 3_600_000;
    for (name, expiry) in [
        ("statement/no-expiry", None),
        ("statement/token-expiry", Some(far)),
    ] {
        let mut relay = Relay::new(RelayLimits::default(), PassThrough).with_expiry(expiry);
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = query.clone();
                relay.on_client_bytes(&mut buf).unwrap();
                while relay.pop_to_server().is_some() {}
                // The server's answer, so the relay is ready for the next one.
                let mut answer = BytesMut::from(&b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I"[..]);
                relay.on_server_bytes(&mut answer).unwrap();
                while relay.pop_to_client().is_some() {}
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = scram, tokens, statement
}
criterion_main!(benches);
