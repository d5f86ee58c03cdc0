//! False-positive rates of the value detectors on random digit strings.
//!
//! Run with `cargo test -p portcullis --test mask_fp_rate -- --nocapture` to see the
//! table. The asserts pin the properties that keep ordinary ids intact: a number failing
//! Luhn is never a card, a bare 9-digit number is never an SSN or routing number without
//! a hint or keyword, and the measured rates stay near what the checks predict.

use portcullis::mask::DetectorKind;
use portcullis::mask::detect::{DetectorSet, Scanner, luhn_valid};

const SAMPLES: usize = 60_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn digits(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| b'0' + (self.next() % 10) as u8).collect()
    }
}

/// Share of `samples` in which `scanner` finds a `kind`.
fn rate(scanner: &Scanner, kind: DetectorKind, mut make: impl FnMut() -> Vec<u8>) -> f64 {
    let mut out = Vec::new();
    let mut hits = 0;
    for _ in 0..SAMPLES {
        scanner.scan(&make(), &mut out);
        hits += usize::from(out.iter().any(|f| f.kind == kind));
    }
    hits as f64 / SAMPLES as f64
}

fn scanner(hints: &[DetectorKind]) -> Scanner {
    Scanner::new(DetectorSet::all(), hints.iter().copied().collect())
}

#[test]
fn false_positive_rates() {
    let plain = scanner(&[]);
    let mut rng = Rng(42);
    let mut table = Vec::new();

    let card16 = rate(&plain, DetectorKind::Card, || rng.digits(16));
    table.push((String::from("card: random 16 digits"), card16));
    let failing_luhn = rate(&plain, DetectorKind::Card, || {
        loop {
            let d = rng.digits(16);
            if !luhn_valid(&d) {
                break d;
            }
        }
    });
    table.push((
        String::from("card: random 16 digits failing Luhn"),
        failing_luhn,
    ));
    for len in [13, 15, 19] {
        let r = rate(&plain, DetectorKind::Card, || rng.digits(len));
        table.push((format!("card: random {len} digits"), r));
    }
    let spaced = rate(&plain, DetectorKind::Card, || {
        let d = rng.digits(16);
        d.chunks(4).collect::<Vec<_>>().join(&b' ')
    });
    table.push((String::from("card: random 16 digits as 4x4 groups"), spaced));

    let bare9_ssn = rate(&plain, DetectorKind::Ssn, || rng.digits(9));
    table.push((
        String::from("ssn: random bare 9 digits, no hint"),
        bare9_ssn,
    ));
    let bare9_ssn_hint = rate(&scanner(&[DetectorKind::Ssn]), DetectorKind::Ssn, || {
        rng.digits(9)
    });
    table.push((
        String::from("ssn: random bare 9 digits, ssn hint"),
        bare9_ssn_hint,
    ));
    let dashed = rate(&plain, DetectorKind::Ssn, || {
        let d = rng.digits(9);
        [&d[..3], b"-", &d[3..5], b"-", &d[5..]].concat()
    });
    table.push((String::from("ssn: random NNN-NN-NNNN"), dashed));

    let bare9_routing = rate(&plain, DetectorKind::Routing, || rng.digits(9));
    table.push((
        String::from("routing: random bare 9 digits, no hint/keyword"),
        bare9_routing,
    ));
    let keyword = rate(&plain, DetectorKind::Routing, || {
        [&b"routing "[..], &rng.digits(9)].concat()
    });
    table.push((
        String::from("routing: random 9 digits after \"routing\""),
        keyword,
    ));
    let hinted = rate(
        &scanner(&[DetectorKind::Routing]),
        DetectorKind::Routing,
        || rng.digits(9),
    );
    table.push((
        String::from("routing: random bare 9 digits, routing hint"),
        hinted,
    ));

    let iban = rate(&plain, DetectorKind::Iban, || {
        [&b"DE"[..], &rng.digits(20)].concat()
    });
    table.push((String::from("iban: DE + random 20 digits"), iban));

    // Free text made of random numbers: findings per MB.
    let mut text = Vec::new();
    while text.len() < 1 << 20 {
        let len = 1 + (rng.next() % 20) as usize;
        text.extend(rng.digits(len));
        text.push(if rng.next().is_multiple_of(4) {
            b'-'
        } else {
            b' '
        });
    }
    let mut found = Vec::new();
    plain.scan(&text, &mut found);
    let per_mb = found.len() as f64 / (text.len() as f64 / (1 << 20) as f64);

    println!("\ndetector false-positive rates ({SAMPLES} samples each)");
    for (what, r) in &table {
        println!("  {what:<48} {:>8.4}%", r * 100.0);
    }
    println!(
        "  {:<48} {per_mb:>8.1}",
        "findings per MB of random numbers and dashes"
    );

    assert_eq!(failing_luhn, 0.0, "a 16-digit id failing Luhn must stay");
    assert_eq!(
        bare9_ssn, 0.0,
        "a bare 9-digit number is not an SSN without a hint"
    );
    assert_eq!(
        bare9_routing, 0.0,
        "a bare 9-digit number is not a routing number without context"
    );
    // Luhn passes 1 in 10; known issuer ranges take roughly a third of the rest.
    assert!(card16 < 0.05, "{card16}");
    assert!(spaced < 0.05, "{spaced}");
    // mod-97 = 1 for about 1 in 97.
    assert!(iban < 0.015, "{iban}");
    // The 3-7-1 checksum passes 1 in 10, Federal Reserve prefixes about 38 in 100.
    assert!(keyword < 0.05 && hinted < 0.05, "{keyword} {hinted}");
}
