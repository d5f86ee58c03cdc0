//! How long the sealer takes to rebuild its tree on start and the verifier to check a log
//! of a million ~400-byte records (about 400 MB): a measurement, so a bench, not a test.
//! `cargo bench -p portcullis-auditlog --bench rebuild`.

use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use portcullis_auditlog::checkpoint::LogSigner;
use portcullis_auditlog::sealer::{CheckpointPolicy, Sealer};
use portcullis_auditlog::segment::{Rotation, Writer};
use portcullis_auditlog::verify::verify;

fn main() {
    const N: u64 = 1_000_000;
    let d = tempfile::tempdir().unwrap();
    let signer = || LogSigner::new("big/audit", SigningKey::from_bytes(&[9; 32])).unwrap();
    let (mut w, _) = Writer::open(d.path(), Rotation::default()).unwrap();
    let policy = CheckpointPolicy {
        every_records: 100_000,
        every_secs: u64::MAX,
    };
    let (mut s, _) = Sealer::open(d.path(), signer(), policy, vec![]).unwrap();
    let pad = "x".repeat(300);
    let started = Instant::now();
    let mut batch = Vec::new();
    for i in 0..N {
        batch.push(format!(
            "{{\"v\":1,\"kind\":\"query\",\"time\":\"2026-12-01T14:00:00Z\",\"seq\":{i},\"sql\":\"select {pad}\"}}"
        ));
        if batch.len() == 1000 {
            w.append(batch.iter().map(String::as_bytes)).unwrap();
            for r in &batch {
                s.add(r.as_bytes());
            }
            batch.clear();
            if s.due(SystemTime::now()) {
                s.checkpoint(SystemTime::now()).unwrap();
            }
        }
    }
    w.sync().unwrap();
    let written = started.elapsed();
    drop(s);
    let started = Instant::now();
    let (s, opened) = Sealer::open(d.path(), signer(), policy, vec![]).unwrap();
    let open = started.elapsed();
    assert_eq!(s.size(), N);
    let started = Instant::now();
    let r = verify(d.path(), &signer().verifier(), &[]).unwrap();
    let verified = started.elapsed();
    assert!(r.intact, "{r}");
    let bytes: u64 = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "{N} records, {} MB: written and sealed in {:?}, Sealer::open {:?} (rebuild {:?}), verify {:?}",
        bytes >> 20,
        written,
        open,
        opened.rebuild,
        verified
    );
    assert!(open < Duration::from_secs(60));
}
