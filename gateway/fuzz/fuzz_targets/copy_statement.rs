//! COPY statements come from the agent: reading them for masking (PostgreSQL's grammar,
//! then the option rules) must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::analysis::copy;
use portcullis::mask::ColumnDesc;
use portcullis::session::copy_target::parse_statement;

fuzz_target!(|data: &[u8]| {
    // A plausible server answer: text format, three columns.
    let copy_out = b"H\x00\x00\x00\x0d\x00\x00\x03\x00\x00\x00\x00\x00\x00";
    let columns: Vec<ColumnDesc> = ["id", "ssn", "notes"]
        .iter()
        .map(|n| ColumnDesc::computed(n, 25))
        .collect();
    if let Ok(sql) = std::str::from_utf8(data) {
        let _ = copy::read(sql);
    }
    if let Ok(target) = parse_statement(data) {
        let _ = target.format(&columns, copy_out);
        let _ = target.check_encoding();
        let _ = target.columns_sql();
    }
});
