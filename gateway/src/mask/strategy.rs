//! How one value (or one finding inside a value) is replaced: the compiled strategies.
//!
//! Every strategy upholds one promise: its output is never a valid card number, SSN,
//! routing number or IBAN. `redact` text is checked when the policy compiles; `hash`
//! tokens are letters only; `partial` falls back to masking everything when the kept
//! characters would still form a valid value; `format_preserving` substitutes digits and
//! letters and then nudges digits until every checksum fails (Luhn, ABA, mod-97) and a
//! nine-digit value starts with 9, an SSN area that is never issued.

use std::hash::Hasher;

use bytes::BufMut;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::{DetectorKind, StrategyKind};
use super::detect::{self, Scanner};

type HmacSha256 = Hmac<Sha256>;

/// Where strategies write: `Vec<u8>` or `BytesMut`, appended to and patched in place.
pub trait Sink: BufMut + std::ops::DerefMut<Target = [u8]> {
    /// Drops everything after the first `len` bytes.
    fn truncate_to(&mut self, len: usize);
}

impl Sink for Vec<u8> {
    fn truncate_to(&mut self, len: usize) {
        self.truncate(len);
    }
}

impl Sink for bytes::BytesMut {
    fn truncate_to(&mut self, len: usize) {
        self.truncate(len);
    }
}

/// Letters used for hash tokens: a token has no digits, so it can never form part of a
/// card or account number that a later scan (or a human) would take for real.
const TOKEN_ALPHABET: &[u8; 16] = b"abcdefghijklmnop";
/// Bytes of the HMAC kept in a token (96 bits: no collisions in practice).
const TOKEN_BYTES: usize = 12;

/// A compiled strategy with its parameters and key material.
#[derive(Clone)]
pub enum Strategy {
    Redact(Box<[u8]>),
    Partial {
        keep_first: usize,
        keep_last: usize,
        mask: u8,
    },
    /// HMAC-SHA256 under a derived key.
    Hash(Box<TokenMac>),
    /// SipHash keys for the substitution stream.
    FormatPreserving(u64, u64),
    Null,
}

impl std::fmt::Debug for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(self.kind().as_str())
    }
}

/// Format-preserving output that could not be made invalid (kept for the error path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unspoilable;

impl Strategy {
    /// Key material derived from the configured key: the HMAC for `hash` and the SipHash
    /// keys for `format_preserving` are separated by a label so one never reveals the
    /// other.
    pub fn hash(key: &[u8]) -> Strategy {
        Strategy::Hash(Box::new(TokenMac::new(&derive(
            key,
            b"portcullis/mask/hash/v1",
        ))))
    }

    pub fn format_preserving(key: &[u8]) -> Strategy {
        let mut mac = keyed(key, b"portcullis/mask/fpe/v1");
        mac.update(b"sip");
        let d = mac.finalize().into_bytes();
        let k0 = u64::from_le_bytes(d[..8].try_into().unwrap_or_default());
        let k1 = u64::from_le_bytes(d[8..16].try_into().unwrap_or_default());
        Strategy::FormatPreserving(k0, k1)
    }

    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::Redact(_) => StrategyKind::Redact,
            Strategy::Partial { .. } => StrategyKind::Partial,
            Strategy::Hash(_) => StrategyKind::Hash,
            Strategy::FormatPreserving(..) => StrategyKind::FormatPreserving,
            Strategy::Null => StrategyKind::Null,
        }
    }

    /// Appends the masked form of `value` to `out`. `Null` writes nothing: the caller
    /// turns the field into SQL NULL.
    pub fn write<S: Sink>(&self, value: &[u8], out: &mut S) -> Result<(), Unspoilable> {
        match self {
            Strategy::Redact(text) => out.put_slice(text),
            Strategy::Partial {
                keep_first,
                keep_last,
                mask,
            } => partial(value, *keep_first, *keep_last, *mask, out),
            Strategy::Hash(mac) => {
                let digest = mac.tag(value);
                for b in &digest[..TOKEN_BYTES] {
                    out.put_u8(TOKEN_ALPHABET[usize::from(b >> 4)]);
                    out.put_u8(TOKEN_ALPHABET[usize::from(b & 15)]);
                }
            }
            Strategy::FormatPreserving(k0, k1) => {
                let start = out.len();
                substitute(value, *k0, *k1, out);
                spoil(&mut out[start..])?;
            }
            Strategy::Null => {}
        }
        Ok(())
    }
}

fn keyed(key: &[u8], label: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(&derive(key, label)).expect("HMAC takes keys of any length")
}

/// A per-purpose key, so the configured key is used for one thing only.
fn derive(key: &[u8], label: &[u8]) -> [u8; 32] {
    let mut kdf = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    kdf.update(label);
    kdf.finalize().into_bytes().into()
}

/// HMAC-SHA256 (RFC 2104) with the key's inner and outer pad blocks compressed once.
///
/// A token is computed per masked value, and most values (names, e-mails, numbers) fit
/// in one SHA-256 block with the padding: those take exactly two compressions, with no
/// hasher state to clone or buffer to manage. Longer values go through the `hmac`
/// crate; tests check both paths agree with it.
#[derive(Clone)]
pub struct TokenMac {
    inner: [u32; 8],
    outer: [u32; 8],
    long: HmacSha256,
}

/// Values up to this length fit in one block with the 0x80 byte and the bit length.
const ONE_BLOCK: usize = 64 - 1 - 8;

impl TokenMac {
    fn new(key: &[u8; 32]) -> Self {
        let pad = |byte: u8| {
            let mut block = [byte; 64];
            block.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
            let mut state = SHA256_IV;
            sha2::compress256(&mut state, &[block.into()]);
            state
        };
        TokenMac {
            inner: pad(0x36),
            outer: pad(0x5c),
            long: HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length"),
        }
    }

    fn tag(&self, value: &[u8]) -> [u8; 32] {
        if value.len() > ONE_BLOCK {
            let mut mac = self.long.clone();
            mac.update(value);
            return mac.finalize().into_bytes().into();
        }
        // Both messages follow a 64-byte pad block, hence the 64 in the bit lengths.
        let inner = final_block(&self.inner, value);
        let mut digest = [0u8; 32];
        for (chunk, word) in digest.chunks_exact_mut(4).zip(inner) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        let outer = final_block(&self.outer, &digest);
        for (chunk, word) in digest.chunks_exact_mut(4).zip(outer) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }
}

/// Runs the last SHA-256 block over `msg` (at most [`ONE_BLOCK`] bytes) that follows one
/// already-compressed 64-byte block.
fn final_block(state: &[u32; 8], msg: &[u8]) -> [u32; 8] {
    let mut block = [0u8; 64];
    block[..msg.len()].copy_from_slice(msg);
    block[msg.len()] = 0x80;
    let bits = ((64 + msg.len()) as u64) * 8;
    block[56..].copy_from_slice(&bits.to_be_bytes());
    let mut state = *state;
    sha2::compress256(&mut state, &[block.into()]);
    state
}

const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Length in bytes of the UTF-8 character starting with `b` (1 for stray bytes).
fn char_len(b: u8) -> usize {
    match b {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// A character that carries information: letters, digits and anything non-ASCII.
fn significant(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

fn partial<S: Sink>(value: &[u8], keep_first: usize, keep_last: usize, mask: u8, out: &mut S) {
    let start = out.len();
    let kept = if value.is_ascii() {
        partial_ascii(value, keep_first, keep_last, mask, out)
    } else {
        partial_chars(value, keep_first, keep_last, mask, out)
    };
    recheck(&mut out[start..], kept, mask);
}

/// The common case. The kept letters and digits are few and at the ends, so the bytes
/// between the last kept one at the front and the first kept one at the back are
/// masked wherever they are letters or digits, in one pass with no per-byte branch that
/// reads the value and writes `out` once (rewriting a fresh copy byte by byte was the
/// strategy's hottest spot). Returns how many stayed visible.
///
/// Both ends are found by walking in from each side, and whether anything is left to mask
/// between them decides if the ends may show. Counting every letter and digit first, to
/// compare with what is kept, was about a quarter of the strategy's own time.
fn partial_ascii<S: Sink>(
    value: &[u8],
    keep_first: usize,
    keep_last: usize,
    mask: u8,
    out: &mut S,
) -> usize {
    // `from`: just after the keep_first-th letter or digit; `to`: at the keep_last-th
    // from the end. If those overlap or meet, the value has no more significant
    // characters than are kept, and all of it is masked (see `kept`).
    let ends = nth_alnum_end(value.iter(), keep_first)
        .zip(nth_alnum_end(value.iter().rev(), keep_last).map(|n| value.len() - n))
        .filter(|&(from, to)| from < to && value[from..to].iter().any(|&b| detect::alnum(b)));
    let (from, to, kept) = match ends {
        Some((from, to)) => (from, to, keep_first + keep_last),
        None => (0, value.len(), 0),
    };
    out.put_slice(&value[..from]);
    let at = out.len();
    out.put_bytes(0, to - from);
    for (o, &b) in out[at..].iter_mut().zip(&value[from..to]) {
        *o = if detect::alnum(b) { mask } else { b };
    }
    out.put_slice(&value[to..]);
    kept
}

/// Bytes up to and including the `n`-th letter or digit: `Some(0)` for `n == 0`, `None`
/// when there are fewer than `n`.
fn nth_alnum_end<'a>(bytes: impl Iterator<Item = &'a u8>, n: usize) -> Option<usize> {
    if n == 0 {
        return Some(0);
    }
    let mut seen = 0;
    for (i, &b) in bytes.enumerate() {
        if detect::alnum(b) {
            seen += 1;
            if seen == n {
                return Some(i + 1);
            }
        }
    }
    None
}

/// Any text: multi-byte characters count as one significant character each. Returns how
/// many stayed visible.
fn partial_chars<S: Sink>(
    value: &[u8],
    keep_first: usize,
    keep_last: usize,
    mask: u8,
    out: &mut S,
) -> usize {
    let total = chars(value).filter(|c| significant(c[0])).count();
    let (kf, kl) = kept(keep_first, keep_last, total);
    let mut idx = 0;
    for c in chars(value) {
        if significant(c[0]) {
            if idx >= kf && idx < total - kl {
                out.put_u8(mask);
            } else {
                out.put_slice(c);
            }
            idx += 1;
        } else {
            out.put_slice(c);
        }
    }
    kf + kl
}

/// Keeping everything of a short value would reveal it: then mask all of it.
fn kept(keep_first: usize, keep_last: usize, total: usize) -> (usize, usize) {
    if keep_first + keep_last >= total {
        (0, 0)
    } else {
        (keep_first, keep_last)
    }
}

/// If the kept characters still read as a real value (a long free-text cell), mask all.
/// Nine kept characters are the fewest that can (an SSN or routing number).
fn recheck(out: &mut [u8], kept: usize, mask: u8) {
    if kept >= 9 && Scanner::strict().finds_any(out) {
        // Multi-byte characters become runs of mask bytes; still valid text.
        out.iter_mut()
            .filter(|b| significant(**b))
            .for_each(|b| *b = mask);
    }
}

fn chars(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= value.len() {
            return None;
        }
        let n = char_len(value[i]).min(value.len() - i);
        let c = &value[i..i + n];
        i += n;
        Some(c)
    })
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform small numbers drawn from a keyed stream. Each draw multiplies the 64-bit
/// fraction left by the range and keeps the high word, so one PRNG step yields about
/// eight characters (each uses log2(range) of its 64 bits) without a division.
struct Draws {
    state: u64,
    frac: u64,
    left: u8,
}

impl Draws {
    fn new(seed: u64) -> Self {
        Draws {
            state: seed,
            frac: 0,
            left: 0,
        }
    }

    #[inline]
    fn below(&mut self, range: u8) -> u8 {
        if self.left == 0 {
            self.frac = splitmix(&mut self.state);
            self.left = 8;
        }
        self.left -= 1;
        let wide = u128::from(self.frac) * u128::from(range);
        self.frac = wide as u64;
        (wide >> 64) as u8
    }

    /// The substitute for one ASCII byte: digits become digits, letters letters of the
    /// same case, anything else stays.
    #[inline]
    fn replace(&mut self, b: u8) -> u8 {
        match b {
            b'0'..=b'9' => b'0' + self.below(10),
            b'A'..=b'Z' => b'A' + self.below(26),
            b'a'..=b'z' => b'a' + self.below(26),
            _ => b,
        }
    }
}

/// Digits become digits, letters letters (a non-ASCII character becomes one ASCII
/// letter), everything else stays. The stream is seeded by a keyed PRF of the whole
/// value, so equal inputs mask equally under one key and the key is needed to link
/// outputs to inputs.
fn substitute<S: Sink>(value: &[u8], k0: u64, k1: u64, out: &mut S) {
    #[allow(deprecated)] // SipHash-2-4 is exactly what is wanted: a fast keyed PRF.
    let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
    h.write(value);
    let mut draws = Draws::new(h.finish());
    // An IBAN keeps its country code, so the masked value still reads as one.
    let keep = if value.len() >= 4
        && value[..2].iter().all(u8::is_ascii_uppercase)
        && value[2..4].iter().all(u8::is_ascii_digit)
    {
        2
    } else {
        0
    };
    out.put_slice(&value[..keep]);
    let rest = &value[keep..];
    if rest.is_ascii() {
        // The common case: copy once and rewrite letters and digits in place.
        // Read from the value, not the fresh copy: re-reading bytes just stored cost more
        // than the substitution.
        let start = out.len();
        out.put_slice(rest);
        for (o, &b) in out[start..].iter_mut().zip(rest) {
            *o = draws.replace(b);
        }
        return;
    }
    for c in chars(rest) {
        match c[0] {
            b if b >= 0x80 => out.put_u8(b'a' + draws.below(26)),
            b if c.len() == 1 => out.put_u8(draws.replace(b)),
            _ => out.put_slice(c),
        }
    }
}

/// Makes substituted output invalid as any checksummed identifier. Only digits change,
/// so the shape stays.
fn spoil(out: &mut [u8]) -> Result<(), Unspoilable> {
    if spoil_plain_number(out) {
        return Ok(());
    }
    let digit_count = out.iter().filter(|b| b.is_ascii_digit()).count();
    if digit_count == 9
        && let Some(first) = out.iter_mut().find(|b| b.is_ascii_digit())
    {
        *first = b'9';
    }
    fix(out, &Scanner::strict(), true)
}

/// The common shapes, settled without a scan: a value of digits only is one digit run,
/// and the scanner judges a run only whole (a card is 13-19 digits, an SSN or routing
/// number 9, an IBAN needs letters), so checking the whole value is enough. Nine digits
/// with dashes or spaces (an SSN's 3-2-4) cannot hold anything else either. Returns
/// false for every other shape, which then gets the full scan.
fn spoil_plain_number(out: &mut [u8]) -> bool {
    let mut digits = 0;
    let mut separators = 0;
    for &b in out.iter() {
        if b.is_ascii_digit() {
            digits += 1;
        } else if b == b'-' || b == b' ' {
            separators += 1;
        } else {
            return false;
        }
    }
    if digits == 9 {
        let mut d = nine_digits(out);
        // Area 9xx is never issued, so the value cannot be an SSN; then break the ABA
        // checksum (one step of the last digit always does, its weight being 1).
        d[0] = b'9';
        if detect::aba_checksum_ok(&d) {
            d[8] = if d[8] == b'9' { b'0' } else { d[8] + 1 };
        }
        for (slot, &v) in out.iter_mut().filter(|b| b.is_ascii_digit()).zip(&d) {
            *slot = v;
        }
        return true;
    }
    if separators > 0 {
        return false;
    }
    // Any single-digit change breaks Luhn.
    if (13..=19).contains(&digits) && detect::luhn_valid(out) {
        bump_last_digit(out);
    }
    true
}

/// Changes digits of `out` until `scanner` finds nothing checksummed in it (e-mail
/// findings are ignored: they have no checksum to break). Used on scanned text after
/// format-preserving replacement, where a replaced number can meet its neighbours.
pub(crate) fn fix_findings(out: &mut [u8], scanner: &Scanner) -> Result<(), Unspoilable> {
    fix(out, scanner, false)
}

fn fix(out: &mut [u8], scanner: &Scanner, whole_value: bool) -> Result<(), Unspoilable> {
    let mut findings = Vec::new();
    for _ in 0..64 {
        if whole_value && simple_nine_digits(out) {
            // Nine digits and separators only: the whole-value checks below (area 9xx,
            // ABA checksum) already cover everything the scanner could find.
            let digits = nine_digits(out);
            if detect::aba_checksum_ok(&digits) || detect::ssn_valid(&digits) {
                bump_last_digit(out);
                continue;
            }
            return Ok(());
        }
        let whole = whole_value && {
            // Only counts of 9 and 13-19 matter, so a small stack buffer is enough.
            let mut buf = [0u8; 20];
            let mut n = 0;
            for &b in out.iter().filter(|b| b.is_ascii_digit()) {
                if n == buf.len() {
                    break;
                }
                buf[n] = b;
                n += 1;
            }
            let digits = &buf[..n];
            ((13..=19).contains(&n) && detect::luhn_valid(digits))
                || (n == 9 && (detect::aba_checksum_ok(digits) || detect::ssn_valid(digits)))
                || (out.len() >= 4
                    && out[..2].iter().all(u8::is_ascii_uppercase)
                    && compact_iban_valid(out))
        };
        let (start, end, kind) = if whole {
            (0, out.len(), None)
        } else {
            scanner.scan(out, &mut findings);
            match findings.iter().find(|f| f.kind != DetectorKind::Email) {
                Some(f) => (f.start, f.end, Some(f.kind)),
                None => return Ok(()),
            }
        };
        let span = &mut out[start..end];
        if kind == Some(DetectorKind::Ssn) {
            // Area 9xx is never issued; a serial or group change would not help.
            match span.iter_mut().find(|b| b.is_ascii_digit()) {
                Some(d) => *d = b'9',
                None => return Err(Unspoilable),
            }
            continue;
        }
        // Bump the last digit: any single-digit change breaks Luhn, the ABA checksum
        // and mod-97 for that value; the next round re-checks everything.
        match span.iter_mut().rev().find(|b| b.is_ascii_digit()) {
            Some(d) => *d = if *d == b'9' { b'0' } else { *d + 1 },
            None => return Err(Unspoilable),
        }
    }
    Err(Unspoilable)
}

fn simple_nine_digits(out: &[u8]) -> bool {
    out.iter()
        .all(|b| b.is_ascii_digit() || *b == b' ' || *b == b'-')
        && out.iter().filter(|b| b.is_ascii_digit()).count() == 9
}

fn nine_digits(out: &[u8]) -> [u8; 9] {
    let mut d = [0u8; 9];
    for (slot, &b) in d.iter_mut().zip(out.iter().filter(|b| b.is_ascii_digit())) {
        *slot = b;
    }
    d
}

fn bump_last_digit(out: &mut [u8]) {
    if let Some(d) = out.iter_mut().rev().find(|b| b.is_ascii_digit()) {
        *d = if *d == b'9' { b'0' } else { *d + 1 };
    }
}

fn compact_iban_valid(value: &[u8]) -> bool {
    if value.len() > 48 {
        return false;
    }
    let mut buf = [0u8; 48];
    let mut n = 0;
    for &b in value.iter().filter(|b| **b != b' ') {
        buf[n] = b;
        n += 1;
    }
    detect::iban_valid(&buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::detect::{DetectorSet, card_valid, iban_valid, ssn_valid};

    fn run(s: &Strategy, v: &str) -> String {
        let mut out = Vec::new();
        s.write(v.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn fpe() -> Strategy {
        Strategy::format_preserving(b"0123456789abcdef-test-key")
    }

    #[test]
    fn redact() {
        assert_eq!(
            run(&Strategy::Redact(b"[X]".to_vec().into()), "secret"),
            "[X]"
        );
    }

    #[test]
    fn partial_keeps_separators_and_ends() {
        let last4 = Strategy::Partial {
            keep_first: 0,
            keep_last: 4,
            mask: b'*',
        };
        assert_eq!(run(&last4, "4111-1111-1111-1234"), "****-****-****-1234");
        assert_eq!(run(&last4, "123-45-6789"), "***-**-6789");
        assert_eq!(run(&last4, "abc"), "***", "short values are masked whole");
        let first1 = Strategy::Partial {
            keep_first: 1,
            keep_last: 0,
            mask: b'#',
        };
        assert_eq!(run(&first1, "José Díaz"), "J### ####");
    }

    proptest::proptest! {
        /// The ASCII fast path is the general path's answer, only faster.
        #[test]
        fn partial_ascii_matches_the_general_path(
            value in "[ -~]{0,40}",
            keep_first in 0usize..6,
            keep_last in 0usize..6,
        ) {
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            let fast_kept = partial_ascii(value.as_bytes(), keep_first, keep_last, b'*', &mut fast);
            let kept = partial_chars(value.as_bytes(), keep_first, keep_last, b'*', &mut general);
            proptest::prop_assert_eq!(fast, general);
            proptest::prop_assert_eq!(fast_kept, kept);
        }
    }

    #[test]
    fn partial_never_keeps_a_valid_value() {
        let last12 = Strategy::Partial {
            keep_first: 0,
            keep_last: 12,
            mask: b'*',
        };
        // The last 12 significant characters would keep the whole SSN.
        assert_eq!(run(&last12, "SSN: 123-45-6789"), "***: ***-**-****");
    }

    #[test]
    fn token_mac_is_hmac_sha256() {
        let key = derive(b"some configured key", b"label");
        let mac = TokenMac::new(&key);
        let value: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(37)).collect();
        // Across the one-block boundary and into multi-block values.
        for len in 0..value.len() {
            let mut reference = HmacSha256::new_from_slice(&key).unwrap();
            reference.update(&value[..len]);
            let want: [u8; 32] = reference.finalize().into_bytes().into();
            assert_eq!(mac.tag(&value[..len]), want, "length {len}");
        }
    }

    #[test]
    fn hash_is_deterministic_keyed_and_letters_only() {
        let a = Strategy::hash(b"key-one-0123456789");
        let b = Strategy::hash(b"key-two-0123456789");
        let t = run(&a, "123-45-6789");
        assert_eq!(t.len(), 2 * TOKEN_BYTES);
        assert!(t.bytes().all(|c| c.is_ascii_lowercase()));
        assert_eq!(t, run(&a, "123-45-6789"));
        assert_ne!(t, run(&b, "123-45-6789"));
        assert_ne!(t, run(&a, "123-45-6780"));
    }

    #[test]
    fn format_preserving_keeps_shape_and_fails_checks() {
        let s = fpe();
        for card in [
            "4111111111111111",
            "4111-1111-1111-1111",
            "378282246310005",
            "5555 5555 5555 4444",
        ] {
            let m = run(&s, card);
            assert_eq!(m.len(), card.len());
            for (a, b) in card.bytes().zip(m.bytes()) {
                assert_eq!(a.is_ascii_digit(), b.is_ascii_digit());
                if !a.is_ascii_digit() {
                    assert_eq!(a, b);
                }
            }
            let digits: Vec<u8> = m.bytes().filter(u8::is_ascii_digit).collect();
            assert!(!detect::luhn_valid(&digits), "{card} -> {m}");
            assert_eq!(m, run(&s, card), "deterministic");
        }
        let m = run(&s, "123-45-6789");
        assert!(m.starts_with('9') && m.as_bytes()[3] == b'-' && m.as_bytes()[6] == b'-');
        let digits: Vec<u8> = m.bytes().filter(u8::is_ascii_digit).collect();
        assert!(!ssn_valid(&digits));
        let r = run(&s, "021000021");
        assert!(!detect::aba_checksum_ok(r.as_bytes()) && !detect::aba_valid(r.as_bytes()));
        let i = run(&s, "DE89370400440532013000");
        assert!(i.starts_with("DE") && i.len() == 22 && !iban_valid(i.as_bytes()));
        let e = run(&s, "jane.doe@example.com");
        assert_eq!(e.len(), 20);
        assert_eq!(e.as_bytes()[8], b'@');
    }

    #[test]
    fn format_preserving_output_never_validates() {
        let s = fpe();
        let strict = Scanner::new(DetectorSet::all(), DetectorSet::all());
        // Many inputs: every output must fail every checksum-based detector.
        for i in 0..20_000u64 {
            let v = format!(
                "{:016}",
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 10_000_000_000_000_000
            );
            let m = run(&s, &v);
            assert!(
                !card_valid(m.as_bytes()) && !detect::luhn_valid(m.as_bytes()),
                "{v} -> {m}"
            );
            let nine = &v[..9];
            let m9 = run(&s, nine);
            assert!(!detect::aba_checksum_ok(m9.as_bytes()) && !ssn_valid(m9.as_bytes()));
            let mut out = Vec::new();
            strict.scan(m.as_bytes(), &mut out);
            assert!(
                out.iter()
                    .all(|f| f.kind == crate::mask::DetectorKind::Email)
            );
        }
    }
}
