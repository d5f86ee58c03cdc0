//! The journal end to end: records written through it, across restarts and rotations, are
//! what `verify` calls intact, and every record's `seq` is its position.

use std::path::Path;
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use portcullis_auditlog::checkpoint::LogSigner;
use portcullis_auditlog::journal::{Journal, Sealing, body};
use portcullis_auditlog::sealer::CheckpointPolicy;
use portcullis_auditlog::segment::{Item, Reader, Rotation};
use portcullis_auditlog::verify::{Problem, verify};
use portcullis_auditlog::witness::FileWitness;

const ORIGIN: &str = "portcullis-guard/test";

fn signer() -> LogSigner {
    LogSigner::new(ORIGIN, SigningKey::from_bytes(&[9; 32])).unwrap()
}

#[derive(serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Rec {
    GuardBypass { src: String, count: u64 },
}

fn open(dir: &Path, witness: &Path) -> Journal {
    let sealing = Sealing {
        signer: signer(),
        policy: CheckpointPolicy {
            every_records: 7,
            every_secs: 3600,
        },
        witnesses: vec![Box::new(FileWitness::new(witness))],
    };
    let rotation = Rotation {
        max_bytes: 600,
        max_age: Duration::from_secs(3600),
    };
    Journal::open(dir, rotation, Some(sealing)).unwrap().0
}

fn write(j: &mut Journal, n: u64) {
    for i in 0..n {
        let r = Rec::GuardBypass {
            src: format!("10.0.0.{i}"),
            count: i + 1,
        };
        j.push(&body(SystemTime::now(), ORIGIN, &r).unwrap())
            .unwrap();
        // Uneven batches, so commits and checkpoints fall in different places.
        if i % 3 == 0 {
            j.commit().unwrap();
            j.checkpoint(SystemTime::now(), false).unwrap();
        }
    }
    j.commit().unwrap();
    j.checkpoint(SystemTime::now(), true).unwrap();
}

#[test]
fn a_journal_log_verifies_intact_and_numbers_its_records() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("log");
    let witness = d.path().join("witness.txt");

    let mut j = open(&dir, &witness);
    write(&mut j, 20);
    drop(j);
    let mut j = open(&dir, &witness);
    assert_eq!(j.next_seq(), 20);
    write(&mut j, 11);
    drop(j);

    let report = verify(&dir, &signer().verifier(), std::slice::from_ref(&witness)).unwrap();
    assert!(report.intact, "{report}");
    assert_eq!((report.records, report.unsealed), (31, 0), "{report}");
    assert!(report.segments > 1, "{report}");
    assert!(
        report.to_string().starts_with("intact: 31 records"),
        "{report}"
    );

    for (pos, item) in Reader::open(&dir, 0).unwrap().enumerate() {
        let Item::Record { index, bytes } = item.unwrap() else {
            panic!("not a record at {pos}");
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((v["v"].as_u64(), v["seq"].as_u64()), (Some(1), Some(index)));
        assert_eq!(v["kind"], "guard_bypass");
        assert_eq!(v["gateway"], ORIGIN);
    }

    // Records pushed but never committed are simply not in the log; the log stays intact.
    let mut j = open(&dir, &witness);
    j.push(
        &body(
            SystemTime::now(),
            ORIGIN,
            &Rec::GuardBypass {
                src: "lost".into(),
                count: 1,
            },
        )
        .unwrap(),
    )
    .unwrap();
    drop(j);
    let report = verify(&dir, &signer().verifier(), &[witness]).unwrap();
    assert!(report.intact, "{report}");
    assert_eq!(report.records, 31);
}

#[test]
fn without_a_signer_the_log_is_written_but_vouched_for_by_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (mut j, opened) = Journal::open(d.path(), Rotation::default(), None).unwrap();
    assert!(opened.sealer.is_none() && !j.is_sealed());
    j.push(b"\"kind\":\"guard_start\"}").unwrap();
    j.commit().unwrap();
    let report = verify(d.path(), &signer().verifier(), &[]).unwrap();
    assert!(!report.intact);
    assert!(
        matches!(
            report.first_problem(),
            Some(Problem::NoCheckpoint { records: 1 })
        ),
        "{report}"
    );
}
