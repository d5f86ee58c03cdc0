//! Whatever a server sends, after any client traffic, the relay must not panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::session::hooks::PassThrough;
use portcullis::session::relay::{Relay, RelayLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let cut = (cut as usize).min(data.len());
    let mut relay = Relay::new(RelayLimits { max_message: 1 << 16 }, PassThrough);
    // A typical pipeline so the response queue is in play.
    let mut client = BytesMut::from(
        &b"P\0\0\0\x0bs\0q\0\0\0B\0\0\0\x0e\0s\0\0\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04Q\0\0\0\x06q\0"[..],
    );
    let _ = relay.on_client_bytes(&mut client);
    let mut buf = BytesMut::new();
    for part in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(part);
        if relay.on_server_bytes(&mut buf).is_err() {
            return;
        }
        while relay.pop_to_client().is_some() {}
    }
    let _ = relay.on_server_eof(!buf.is_empty());
});
