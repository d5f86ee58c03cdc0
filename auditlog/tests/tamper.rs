//! Real logs in temporary directories, tampered with the way an intruder would, and what
//! `verify` says about each.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use portcullis_auditlog::checkpoint::{LogSigner, VerifierKey};
use portcullis_auditlog::proof::{CheckpointChoice, ProofError, consistency, prove};
use portcullis_auditlog::sealer::{CHECKPOINTS_FILE, CheckpointPolicy, Sealer};
use portcullis_auditlog::segment::{Rotation, Writer, segment_name};
use portcullis_auditlog::verify::{Problem, Report, verify};
use portcullis_auditlog::witness::{DirWitness, FileWitness, Witness};

const ORIGIN: &str = "test.example/audit";

fn signer(seed: u8) -> LogSigner {
    LogSigner::new(ORIGIN, SigningKey::from_bytes(&[seed; 32])).unwrap()
}

fn key() -> VerifierKey {
    signer(1).verifier()
}

fn record(i: u64) -> String {
    format!(
        "{{\"v\":1,\"kind\":\"query\",\"time\":\"2026-12-01T14:00:{:02}Z\",\"seq\":{i},\"sql\":\"select {i}\"}}",
        i % 60
    )
}

struct Log {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    witness: PathBuf,
    witness_file: PathBuf,
}

impl Log {
    fn witnesses(&self) -> Vec<PathBuf> {
        vec![self.witness.clone()]
    }

    fn seg(&self, first: u64) -> PathBuf {
        self.dir.join(segment_name(first))
    }

    fn verify(&self) -> Report {
        verify(&self.dir, &key(), &self.witnesses()).unwrap()
    }

    /// Rewrites segment `first` through `f` on its lines.
    fn edit(&self, first: u64, f: impl FnOnce(&mut Vec<String>)) {
        let path = self.seg(first);
        let mut lines: Vec<String> = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        f(&mut lines);
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(path, text).unwrap();
    }
}

/// 50 records in segments of 10, a checkpoint every 10 records, a directory witness and a
/// file witness.
fn build(n: u64) -> Log {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let witness = tmp.path().join("witness");
    let witness_file = tmp.path().join("witness.txt");
    let rotation = Rotation {
        max_bytes: record(0).len() as u64 * 10 - 1,
        max_age: Duration::from_secs(3600),
    };
    let (mut w, _) = Writer::open(&dir, rotation).unwrap();
    let policy = CheckpointPolicy {
        every_records: 10,
        every_secs: 3600,
    };
    let ws: Vec<Box<dyn Witness>> = vec![
        Box::new(DirWitness::new(&witness)),
        Box::new(FileWitness::new(&witness_file)),
    ];
    let (mut s, _) = Sealer::open(&dir, signer(1), policy, ws).unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_133_600);
    for i in 0..n {
        let r = record(i);
        w.append([r.as_bytes()]).unwrap();
        w.sync().unwrap();
        s.add(r.as_bytes());
        let now = t0 + Duration::from_secs(i);
        if s.due(now) {
            let sealed = s.checkpoint(now).unwrap();
            assert!(sealed.witness_failures.is_empty());
        }
    }
    for i in 0..n.div_ceil(10) {
        assert!(dir.join(segment_name(i * 10)).exists(), "segment {i}");
    }
    Log {
        _tmp: tmp,
        dir,
        witness,
        witness_file,
    }
}

fn first(r: &Report) -> &Problem {
    assert!(!r.intact, "{r}");
    r.first_problem().unwrap()
}

#[test]
fn an_untouched_log_is_intact() {
    let log = build(50);
    let r = log.verify();
    assert!(r.intact, "{r}");
    assert_eq!(r.records, 50);
    assert_eq!(r.last_checkpoint.as_ref().unwrap().size, 50);
    assert_eq!(r.leaf_index_trusted, 50);
    let text = r.to_string();
    assert!(
        text.starts_with(
            "intact: 50 records, last checkpoint of 50 records at 2026-12-01T14:00:49Z"
        ),
        "{text}"
    );
    assert!(r.to_json().contains("\"intact\": true"));
    // 5 checkpoints in the log, 5 in the witness.
    assert_eq!(r.sources.iter().map(|s| s.verified).sum::<usize>(), 10);
}

#[test]
fn one_changed_byte_names_the_record() {
    let log = build(50);
    log.edit(20, |l| l[3] = l[3].replace("select 23", "select 24"));
    let r = log.verify();
    match first(&r) {
        Problem::Altered {
            record,
            count,
            checkpoint,
        } => {
            assert_eq!((record.index, *count), (23, 1));
            assert_eq!(record.segment, segment_name(20));
            assert_eq!(record.line, 4);
            assert!(record.summary.contains("\"query\""), "{}", record.summary);
            assert_eq!(checkpoint.size, 30);
        }
        p => panic!("{p}"),
    }
    let text = r.to_string();
    assert!(text.contains("first problem: record 23 ("), "{text}");
}

#[test]
fn a_deleted_record_is_named() {
    let log = build(50);
    log.edit(20, |l| {
        l.remove(3);
    });
    let r = log.verify();
    match first(&r) {
        Problem::Removed {
            index, count, next, ..
        } => {
            assert_eq!((*index, *count), (23, 1));
            assert_eq!(next.index, 23, "the old 24 now stands at 23");
        }
        p => panic!("{p}"),
    }
    // The next segment no longer follows on either.
    assert!(r.problems.iter().any(|p| matches!(
        p,
        Problem::Gap {
            expected: 29,
            first: 30,
            ..
        }
    )));
}

#[test]
fn two_swapped_records_are_named() {
    let log = build(50);
    log.edit(20, |l| l.swap(3, 4));
    match first(&log.verify()) {
        Problem::Reordered { record, other, .. } => {
            assert_eq!((record.index, other.index), (23, 24));
        }
        p => panic!("{p}"),
    }
    // Records far apart too.
    let log = build(50);
    log.edit(20, |l| l.swap(1, 8));
    match first(&log.verify()) {
        Problem::Reordered { record, other, .. } => {
            assert_eq!((record.index, other.index), (21, 28));
        }
        p => panic!("{p}"),
    }
}

#[test]
fn an_inserted_record_is_named() {
    let log = build(50);
    log.edit(20, |l| l.insert(3, record(999)));
    let r = log.verify();
    match first(&r) {
        Problem::Inserted { record, count, .. } => {
            assert_eq!((record.index, *count), (23, 1));
            assert!(record.summary.contains("999"), "{}", record.summary);
        }
        p => panic!("{p}"),
    }
}

#[test]
fn a_cut_tail_is_caught_by_the_witness() {
    let log = build(50);
    // A careful intruder cuts the records and the log's own checkpoints alike.
    log.edit(40, |l| l.truncate(5));
    let local = log.dir.join(CHECKPOINTS_FILE);
    let text = fs::read_to_string(&local).unwrap();
    let keep = text
        .find("\n50\n")
        .map(|i| text[..i].rfind("\n\n").unwrap() + 2)
        .unwrap();
    fs::write(&local, &text[..keep]).unwrap();

    // Without a witness nothing shows it: a bare log cannot tell it was cut.
    let alone = verify(&log.dir, &key(), &[]).unwrap();
    assert!(alone.intact, "{alone}");
    assert_eq!(alone.unsealed, 5);

    for w in [log.witness.clone(), log.witness_file.clone()] {
        let r = verify(&log.dir, &key(), &[w]).unwrap();
        match first(&r) {
            Problem::Truncated {
                records,
                sealed,
                checkpoint,
            } => {
                assert_eq!((*records, *sealed), (45, 50));
                assert!(!checkpoint.source.starts_with(&log.dir));
            }
            p => panic!("{p}"),
        }
        assert!(r.to_string().contains("records 45..49 missing"), "{r}");
    }
}

#[test]
fn a_replaced_segment_is_named() {
    let log = build(50);
    log.edit(10, |l| {
        for (i, line) in l.iter_mut().enumerate() {
            *line = record(10 + i as u64).replace("query", "login");
        }
    });
    match first(&log.verify()) {
        Problem::Altered { record, count, .. } => {
            assert_eq!((record.index, *count), (10, 10));
            assert_eq!(record.segment, segment_name(10));
        }
        p => panic!("{p}"),
    }
}

#[test]
fn a_removed_segment_is_a_gap() {
    let log = build(50);
    fs::remove_file(log.seg(10)).unwrap();
    let r = log.verify();
    assert!(
        matches!(
            first(&r),
            Problem::Gap {
                expected: 10,
                first: 20,
                ..
            }
        ),
        "{r}"
    );
    assert!(
        r.problems.iter().any(|p| matches!(
            p,
            Problem::Removed {
                index: 10,
                count: 10,
                ..
            }
        )),
        "{r}"
    );
    // The first segment too, which leaves no gap between segments.
    let log = build(50);
    fs::remove_file(log.seg(0)).unwrap();
    let r = log.verify();
    assert!(
        matches!(
            first(&r),
            Problem::Gap {
                expected: 0,
                first: 10,
                ..
            }
        ),
        "{r}"
    );
}

#[test]
fn without_the_leaf_index_a_change_is_located_between_checkpoints() {
    let log = build(50);
    fs::remove_file(log.dir.join("leaves")).unwrap();
    log.edit(20, |l| l[3] = l[3].replace("select", "delete"));
    let r = log.verify();
    match first(&r) {
        Problem::Unlocated {
            from, to, segment, ..
        } => {
            assert_eq!((*from, *to), (20, 30));
            assert_eq!(segment, &segment_name(20));
        }
        p => panic!("{p}"),
    }
    // An index doctored to match the records is no better: it rebuilds no signed root.
    let log = build(50);
    log.edit(20, |l| l[3] = l[3].replace("select", "delete"));
    let idx = log.dir.join("leaves");
    let mut bytes = fs::read(&idx).unwrap();
    let line = fs::read_to_string(log.seg(20))
        .unwrap()
        .lines()
        .nth(3)
        .unwrap()
        .to_owned();
    bytes[23 * 32..24 * 32]
        .copy_from_slice(&portcullis_auditlog::merkle::leaf_hash(line.as_bytes()));
    fs::write(&idx, bytes).unwrap();
    let r = log.verify();
    assert!(
        matches!(
            first(&r),
            Problem::Unlocated {
                from: 20,
                to: 30,
                ..
            }
        ),
        "{r}"
    );
}

#[test]
fn a_log_re_signed_with_another_key_is_rejected() {
    let log = build(30);
    log.edit(10, |l| l[2] = l[2].replace("select", "update"));
    // The intruder rebuilds the whole thing under a key of their own.
    fs::remove_file(log.dir.join(CHECKPOINTS_FILE)).unwrap();
    fs::remove_file(log.dir.join("leaves")).unwrap();
    let (mut s, _) =
        Sealer::open(&log.dir, signer(2), CheckpointPolicy::default(), vec![]).unwrap();
    s.checkpoint(SystemTime::now()).unwrap();
    drop(s);
    // Self-consistent under the intruder's key...
    let theirs = verify(&log.dir, &signer(2).verifier(), &[]).unwrap();
    assert!(theirs.intact, "{theirs}");
    // ...and not under ours.
    let r = verify(&log.dir, &key(), &[]).unwrap();
    assert!(!r.intact);
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::ForeignKey { .. })),
        "{r}"
    );
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::NoCheckpoint { records: 30 })),
        "{r}"
    );
    // With the witness the change is also located.
    let r = log.verify();
    assert!(
        r.problems.iter().any(|p| matches!(
            p,
            Problem::Unlocated {
                from: 10,
                to: 20,
                ..
            }
        )),
        "{r}"
    );
}

#[test]
fn a_checkpoint_with_a_bad_signature_is_reported() {
    let log = build(30);
    let local = log.dir.join(CHECKPOINTS_FILE);
    let text = fs::read_to_string(&local).unwrap();
    fs::write(&local, text.replacen("\n20\n", "\n21\n", 1)).unwrap();
    let r = log.verify();
    match first(&r) {
        Problem::BadSignature { checkpoint } => assert_eq!(checkpoint.size, 21),
        p => panic!("{p}"),
    }
    // Garbage between checkpoints is named with its line.
    fs::write(&local, format!("{text}not a checkpoint\n\n")).unwrap();
    let r = log.verify();
    assert!(r.intact, "a last unreadable note is a torn write: {r}");
    fs::write(&local, format!("not a checkpoint\n\n{text}")).unwrap();
    let r = log.verify();
    assert!(
        matches!(first(&r), Problem::Malformed { line: 1, .. }),
        "{r}"
    );
}

#[test]
fn torn_writes_are_noted_not_blamed() {
    let log = build(25);
    let last = log.seg(20);
    let mut f = fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut f, b"{\"v\":1,\"ki").unwrap();
    drop(f);
    let r = log.verify();
    assert!(r.intact, "{r}");
    assert!(
        r.notes.iter().any(|n| n.contains("cut short by a crash")),
        "{r}"
    );
    // The writer moves it aside; the verifier still mentions it.
    let _ = Writer::open(&log.dir, Rotation::default()).unwrap();
    let r = log.verify();
    assert!(r.intact, "{r}");
    assert!(r.notes.iter().any(|n| n.contains(".torn-")), "{r}");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("5 records after the last checkpoint")),
        "{r}"
    );
    // Stray bytes at the end of a closed segment are not a crash.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(log.seg(0))
        .unwrap();
    std::io::Write::write_all(&mut f, b"xx").unwrap();
    drop(f);
    let r = log.verify();
    assert!(
        matches!(first(&r), Problem::StrayBytes { at: 10, len: 2, .. }),
        "{r}"
    );
}

#[test]
fn proofs_verify_against_checkpoints_and_refuse_a_changed_log() {
    let log = build(50);
    let p = prove(&log.dir, 7, &CheckpointChoice::Latest, Some(&key())).unwrap();
    assert_eq!((p.index, p.tree_size), (7, 50));
    p.verify().unwrap();
    assert!(p.to_string().contains("verified"), "{p}");
    let p = prove(
        &log.dir,
        7,
        &CheckpointChoice::File(log.witness_file.clone()),
        None,
    )
    .unwrap();
    assert!(!p.signature_checked);
    p.verify().unwrap();
    let mut bad = p.clone();
    bad.leaf_hash = bad.leaf_hash.replace('a', "b").replace('1', "2");
    assert!(bad.verify().is_err());
    assert!(matches!(
        prove(&log.dir, 45, &CheckpointChoice::Size(40), None),
        Err(ProofError::NotSealed {
            index: 45,
            size: 40
        })
    ));

    let c = consistency(
        &log.dir,
        &CheckpointChoice::Size(20),
        &CheckpointChoice::Latest,
        Some(&key()),
    )
    .unwrap();
    assert_eq!((c.old.size, c.new.size), (20, 50));
    c.verify().unwrap();
    assert!(c.to_string().contains("extends"), "{c}");
    assert!(matches!(
        consistency(
            &log.dir,
            &CheckpointChoice::Latest,
            &CheckpointChoice::Size(20),
            None
        ),
        Err(ProofError::OutOfOrder { .. })
    ));

    log.edit(10, |l| l[0] = l[0].replace("select", "delete"));
    assert!(matches!(
        prove(&log.dir, 3, &CheckpointChoice::Latest, None),
        Err(ProofError::LogMismatch(_))
    ));
}

/// Keys made by OpenSSL work both ways: the private key signs, its SPKI public key verifies.
#[test]
fn openssl_keys_are_accepted() {
    let Ok(status) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        eprintln!("no openssl: skipped");
        return;
    };
    assert!(status.status.success());
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("key.pem");
    let public = d.path().join("key.pub.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let s = LogSigner::load(&key, ORIGIN).unwrap();
    let spki = VerifierKey::load(public.to_str().unwrap()).unwrap();
    assert_eq!(spki.key, s.verifier().key);
    let tmp = tempfile::tempdir().unwrap();
    let (mut w, _) = Writer::open(tmp.path(), Rotation::default()).unwrap();
    let (mut sealer, _) = Sealer::open(tmp.path(), s, CheckpointPolicy::default(), vec![]).unwrap();
    w.append([record(0).as_bytes()]).unwrap();
    sealer.add(record(0).as_bytes());
    sealer.checkpoint(SystemTime::now()).unwrap();
    let r = verify(tmp.path(), &spki, &[]).unwrap();
    assert!(r.intact, "{r}");
}

mod random {
    use super::*;
    use proptest::prelude::*;

    /// The record position a problem names.
    fn at(p: &Problem) -> Option<u64> {
        match p {
            Problem::Altered { record, .. }
            | Problem::Inserted { record, .. }
            | Problem::Reordered { record, .. } => Some(record.index),
            Problem::Removed { index, .. } => Some(*index),
            Problem::Truncated { records, .. } => Some(*records),
            Problem::Gap { expected, .. } => Some(*expected),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Any one tampering of a sealed record is caught and the first problem names it.
        #[test]
        fn any_single_tampering_is_named(op in 0u8..4, i in 0u64..30, byte in any::<prop::sample::Index>(), with in 0x20u8..0x7f) {
            let log = build(30);
            let (seg, line) = (i / 10 * 10, (i % 10) as usize);
            match op {
                0 => log.edit(seg, |l| {
                    let mut b = l[line].clone().into_bytes();
                    let k = byte.index(b.len());
                    b[k] = if b[k] == with { with ^ 1 } else { with };
                    l[line] = String::from_utf8(b).unwrap();
                }),
                1 => log.edit(seg, |l| { l.remove(line); }),
                2 => log.edit(seg, |l| l.insert(line, record(1000 + i))),
                _ => log.edit(seg, |l| { let j = (line + 1) % l.len(); l.swap(line, j) }),
            }
            let r = log.verify();
            prop_assert!(!r.intact, "{}", r);
            let first = r.first_problem().unwrap();
            let want = if op == 3 { i.min(seg + ((line + 1) % 10) as u64) } else { i };
            prop_assert_eq!(at(first), Some(want), "{}", r);
            let named = r.problems.iter().any(|p| match (op, p) {
                (0, Problem::Altered { record, count: 1, .. }) => record.index == i,
                (1, Problem::Removed { index, count: 1, .. }) => *index == i,
                (1, Problem::Truncated { records: 29, sealed: 30, .. }) => i == 29,
                (2, Problem::Inserted { record, count: 1, .. }) => record.index == i,
                (3, Problem::Reordered { record, .. }) => record.index == want,
                _ => false,
            });
            prop_assert!(named, "{}", r);
        }
    }
}
