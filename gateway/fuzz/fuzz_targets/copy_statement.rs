//! COPY statements come from the agent: reading them for masking must never panic,
//! whatever the bytes and whichever way the session reads backslashes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::mask::ColumnDesc;
use portcullis::session::copy_target::parse_statement_as;

fuzz_target!(|data: &[u8]| {
    // A plausible server answer: text format, three columns.
    let copy_out = b"H\x00\x00\x00\x0d\x00\x00\x03\x00\x00\x00\x00\x00\x00";
    let columns: Vec<ColumnDesc> = ["id", "ssn", "notes"]
        .iter()
        .map(|n| ColumnDesc::computed(n, 25))
        .collect();
    for scs in [None, Some(true), Some(false)] {
        if let Ok(target) = parse_statement_as(data, scs) {
            let _ = target.format(&columns, copy_out);
            let _ = target.check_encoding();
            let _ = target.columns_sql();
        }
    }
});
