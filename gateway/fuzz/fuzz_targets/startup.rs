//! Bytes before authentication (start-up packets, SASL messages) and the upstream's
//! start-up replies must never panic either state machine.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::auth::{IdentityStore, StaticKey, Verifier};
use portcullis::session::handshake::{ClientHandshake, TlsOffer, TokenAuth};
use portcullis::session::upstream::UpstreamHandshake;

fuzz_target!(|data: &[u8]| {
    let store = Arc::new(IdentityStore::new([StaticKey::new(
        "agent",
        vec![],
        Verifier::generate("x", 16),
    )]));
    let mut hs = ClientHandshake::new(store.clone(), TlsOffer::Optional);
    let mut steps = Vec::new();
    hs.on_bytes(&mut BytesMut::from(data), &mut steps);

    // Token logins, as a password and through OAUTHBEARER, on the same bytes.
    for oauthbearer in [false, true] {
        let tokens = TokenAuth {
            enabled: true,
            oauthbearer,
            plaintext: true,
            discovery: Some(("https://idp/.well-known/openid-configuration".into(), "openid".into())),
        };
        let mut hs = ClientHandshake::with_tokens(store.clone(), TlsOffer::None, tokens);
        let mut steps = Vec::new();
        hs.on_bytes(&mut BytesMut::from(data), &mut steps);
    }

    let mut up = UpstreamHandshake::new("u", "p", false, Default::default());
    let mut steps = Vec::new();
    let _ = up.on_bytes(&mut BytesMut::from(data), &mut steps);
});
