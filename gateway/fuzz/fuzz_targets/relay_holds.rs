//! A session whose statements the policy holds, driven by arbitrary bytes from both
//! sides and arbitrary decisions (approve, edit, refuse, with or without a preview): the
//! relay must forward, answer or end the session with an error, never panic, and never
//! consume client bytes while a statement is held.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::session::hooks::{Hold, Hooks, Refusal, Verdict, Via};
use portcullis::session::relay::{Relay, RelayLimits, Release};

/// Holds every statement whose text starts with `d` (previewed when it starts with `dp`).
struct HoldsD;

impl Hooks for HoldsD {
    fn statement(&mut self, sql: &[u8], _via: Via<'_>) -> Verdict {
        if sql.first() == Some(&b'd') {
            Verdict::Hold(Hold {
                rule: None,
                message: "held".into(),
                facts: String::new(),
                approvers: 1,
                timeout_secs: None,
                explainable: true,
                preview: sql.get(1) == Some(&b'p'),
            })
        } else {
            Verdict::Allow
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut relay = Relay::new(
        RelayLimits {
            max_message: 1 << 16,
        },
        HoldsD,
    )
    .with_recent(3);
    let mut client = BytesMut::new();
    let mut server = BytesMut::new();
    // Chunks: a control byte says whose bytes follow (and how many), or a decision.
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let n = ((op >> 3) as usize).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        let r = match op & 7 {
            0 | 1 => {
                client.extend_from_slice(chunk);
                let before = client.len();
                let held = relay.held().is_some();
                let r = relay.on_client_bytes(&mut client);
                assert!(
                    !held || client.len() == before,
                    "client bytes consumed while held"
                );
                r
            }
            2 | 3 => {
                server.extend_from_slice(chunk);
                relay.on_server_bytes(&mut server)
            }
            4 => {
                relay.start_preview();
                Ok(())
            }
            5 => relay.release(Release::Run, &mut client),
            6 => relay.release(
                Release::Edit {
                    sql: String::from_utf8_lossy(chunk).into_owned(),
                    notice: "edited".into(),
                },
                &mut client,
            ),
            _ => relay.release(
                Release::Refuse(Refusal::new("42501", "denied")),
                &mut client,
            ),
        };
        while relay.pop_to_server().is_some() {}
        while relay.pop_to_client().is_some() {}
        if r.is_err() {
            return;
        }
    }
});
