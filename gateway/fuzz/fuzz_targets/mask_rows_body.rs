// Body of the `mask_rows` fuzz target, shared with `gateway/tests/mask_fuzz_smoke.rs` so
// the target keeps compiling and its seeds run under plain `cargo test`.

use bytes::Bytes;
use portcullis::mask::{
    Catalog, ColumnDesc, CopyFormat, DetectorKind, MaskConfig, MaskStats, Policy, RuleConfig,
    StrategyKind, Subject, parse_row_description,
};

fn policy() -> Policy {
    let mut fpe = RuleConfig::new(StrategyKind::FormatPreserving);
    fpe.column_name = Some("c0".into());
    let mut scan = RuleConfig::new(StrategyKind::Partial);
    scan.column_name = Some("c1".into());
    scan.detectors = DetectorKind::ALL.to_vec();
    scan.hints = vec![DetectorKind::Ssn];
    scan.keep_last = Some(4);
    let mut hash = RuleConfig::new(StrategyKind::Hash);
    hash.column_regex = Some("^c[23]$".into());
    let cfg = MaskConfig {
        hash_key: Some("fuzz-key-0123456789abcdef".into()),
        rules: vec![fpe, scan, hash],
        ..MaskConfig::default()
    };
    Policy::compile(&cfg).expect("static config")
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

pub fn run(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let _ = parse_row_description(&frame(b'T', data));
    let policy = policy();
    let who = Subject::new("fuzz", ["r"]);
    let cols: Vec<ColumnDesc> = (0..4)
        .map(|i| {
            let mut c = ColumnDesc::computed(&format!("c{i}"), if i == 3 { 3802 } else { 25 });
            c.format = i16::from(mode & (1 << i) != 0 && i != 0);
            c
        })
        .collect();
    let Ok(mut plan) = policy.plan(&who, &cols, &Catalog::new()) else {
        return;
    };
    let mut stats = MaskStats::new();
    // The input as a DataRow body, with a correct and with a lying length word.
    let _ = plan.mask_data_row(Bytes::from(frame(b'D', data)), &mut stats);
    let mut raw = vec![b'D'];
    raw.extend_from_slice(data);
    let _ = plan.mask_data_row(Bytes::from(raw), &mut stats);
    // The input as a COPY stream cut into a few messages.
    let binary = mode & 0x80 != 0;
    let mut response = vec![u8::from(binary), 0, 4];
    for _ in 0..4 {
        response.extend_from_slice(&i16::from(binary).to_be_bytes());
    }
    let format = if mode & 0x40 != 0 {
        CopyFormat::csv()
    } else {
        CopyFormat::text()
    };
    let Ok(copy) = policy.plan_copy(
        &who,
        Some(&cols),
        &Catalog::new(),
        &frame(b'H', &response),
        format,
    ) else {
        return;
    };
    let mut copy = copy.with_max_carry(4096);
    for chunk in data.chunks(1 + usize::from(mode & 0x0f)) {
        if copy
            .mask_copy_data(Bytes::from(frame(b'd', chunk)), &mut stats)
            .is_err()
        {
            return;
        }
    }
    let _ = copy.finish();
}
