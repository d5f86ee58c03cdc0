//! Property tests of the sans-IO core: arbitrary bytes never panic it, and a
//! well-formed server stream passes through byte-identical however it is cut into reads.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use portcullis::auth::{IdentityStore, StaticKey, Verifier};
use portcullis::protocol::frame::build;
use portcullis::session::handshake::{ClientHandshake, TlsOffer};
use portcullis::session::hooks::PassThrough;
use portcullis::session::relay::{Relay, RelayLimits};
use portcullis::session::upstream::UpstreamHandshake;
use proptest::prelude::*;

fn relay() -> Relay<PassThrough> {
    Relay::new(
        RelayLimits {
            max_message: 1 << 16,
        },
        PassThrough,
    )
}

/// Feeds `data` in reads of the given sizes (cycled).
fn feed(data: &[u8], sizes: &[usize], mut f: impl FnMut(&mut BytesMut) -> bool) {
    let mut buf = BytesMut::new();
    let mut off = 0;
    let mut i = 0;
    while off < data.len() {
        let n = sizes[i % sizes.len()].max(1).min(data.len() - off);
        buf.extend_from_slice(&data[off..off + n]);
        off += n;
        i += 1;
        if !f(&mut buf) {
            return;
        }
    }
}

fn backend_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // DataRow with 1-3 columns, some NULL
        prop::collection::vec(
            prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
            1..4
        )
        .prop_map(|cols| {
            build(b'D', |b| {
                b.put_i16(cols.len() as i16);
                for c in &cols {
                    match c {
                        Some(v) => {
                            b.put_i32(v.len() as i32);
                            b.extend_from_slice(v);
                        }
                        None => b.put_i32(-1),
                    }
                }
            })
            .to_vec()
        }),
        Just(build(b'N', |b| b.extend_from_slice(b"SNOTICE\0Mhello\0\0")).to_vec()),
        Just(build(b'S', |b| b.extend_from_slice(b"TimeZone\0UTC\0")).to_vec()),
        Just(build(b'A', |b| b.extend_from_slice(b"\0\0\0\x01chan\0payload\0")).to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_client_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048), sizes in prop::collection::vec(1usize..64, 1..8)) {
        let mut r = relay();
        feed(&data, &sizes, |buf| {
            let ok = r.on_client_bytes(buf).is_ok();
            while r.pop_to_server().is_some() {}
            while r.pop_to_client().is_some() {}
            ok
        });
    }

    #[test]
    fn arbitrary_server_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048), sizes in prop::collection::vec(1usize..64, 1..8)) {
        let mut r = relay();
        let mut q = BytesMut::from(&build(b'Q', |b| b.extend_from_slice(b"select\0"))[..]);
        r.on_client_bytes(&mut q).unwrap();
        feed(&data, &sizes, |buf| {
            let ok = r.on_server_bytes(buf).is_ok();
            while r.pop_to_client().is_some() {}
            ok
        });
        let _ = r.on_server_eof(true);
    }

    #[test]
    fn arbitrary_startup_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let store = Arc::new(IdentityStore::new([StaticKey::new("a", vec![], Verifier::generate("x", 16))]));
        let mut hs = ClientHandshake::new(store, TlsOffer::Optional);
        let mut steps = Vec::new();
        hs.on_bytes(&mut BytesMut::from(&data[..]), &mut steps);
        let mut up = UpstreamHandshake::new("u", "p", false, Default::default());
        let mut steps = Vec::new();
        let _ = up.on_bytes(&mut BytesMut::from(&data[..]), &mut steps);
    }

    #[test]
    fn a_result_stream_passes_byte_identical_at_any_read_sizes(
        msgs in prop::collection::vec(backend_message(), 0..40),
        sizes in prop::collection::vec(1usize..200, 1..8),
    ) {
        let mut stream = Vec::new();
        stream.extend_from_slice(&build(b'T', |b| b.extend_from_slice(b"\0\x01a\0\0\0\0\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0")));
        for m in &msgs {
            stream.extend_from_slice(m);
        }
        stream.extend_from_slice(&build(b'C', |b| b.extend_from_slice(b"SELECT 1\0")));
        stream.extend_from_slice(&build(b'Z', |b| b.put_u8(b'I')));
        let mut r = relay();
        let mut q = BytesMut::from(&build(b'Q', |b| b.extend_from_slice(b"select\0"))[..]);
        r.on_client_bytes(&mut q).unwrap();
        let mut out = Vec::new();
        feed(&stream, &sizes, |buf| {
            r.on_server_bytes(buf).unwrap();
            while let Some(b) = r.pop_to_client() {
                out.extend_from_slice(&b);
            }
            true
        });
        prop_assert_eq!(out, stream);
        prop_assert!(r.is_idle());
    }
}
