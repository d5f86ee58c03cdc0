//! Whatever a client sends to an established session, split at any point, the relay
//! must answer with an error or forward frames, never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::session::hooks::PassThrough;
use portcullis::session::relay::{Relay, RelayLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let cut = (cut as usize).min(data.len());
    let mut relay = Relay::new(RelayLimits { max_message: 1 << 16 }, PassThrough);
    let mut buf = BytesMut::new();
    for part in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(part);
        if relay.on_client_bytes(&mut buf).is_err() {
            return;
        }
        while relay.pop_to_server().is_some() {}
        while relay.pop_to_client().is_some() {}
    }
});
