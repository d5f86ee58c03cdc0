//! Bytes before authentication (start-up packets, SASL messages) and the upstream's
//! start-up replies must never panic either state machine.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::auth::{Identity, IdentityStore, Verifier};
use portcullis::session::handshake::{ClientHandshake, TlsOffer};
use portcullis::session::upstream::UpstreamHandshake;

fuzz_target!(|data: &[u8]| {
    let store = Arc::new(IdentityStore::new([Identity {
        name: "agent".into(),
        roles: vec![],
        verifier: Verifier::generate("x", 16),
    }]));
    let mut hs = ClientHandshake::new(store, TlsOffer::Optional);
    let mut steps = Vec::new();
    hs.on_bytes(&mut BytesMut::from(data), &mut steps);

    let mut up = UpstreamHandshake::new("u", "p", false, Default::default());
    let mut steps = Vec::new();
    let _ = up.on_bytes(&mut BytesMut::from(data), &mut steps);
});
