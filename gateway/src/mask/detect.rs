//! Finding sensitive values inside free text, and the validators behind each detector.
//!
//! [`Scanner::scan`] makes one left-to-right pass over the bytes. A 256-entry class
//! table skips uninteresting bytes; only three things start a closer look: a digit that
//! begins a word (card, SSN, routing number), an uppercase letter that begins a word
//! (IBAN), and `@` (e-mail, expanded both ways). Nothing allocates per value except the
//! caller's reusable findings vector, and no regular expression runs on values.
//!
//! Detection is deliberately strict so ordinary numbers survive:
//! - card: 13-19 digits (single spaces or dashes between groups of 3 or more, the last may be shorter), a known IIN
//!   range with a length that range issues, and the Luhn check;
//! - SSN: `AAA-GG-SSSS` with area not 000/666/900-999, group not 00, serial not 0000;
//!   a bare 9-digit number only when the rule hints `ssn`;
//! - routing: 9 digits, a Federal Reserve prefix and the 3-7-1 checksum, and either a
//!   `routing` hint or a keyword (`routing`, `aba`, `rtn`, `transit`) close by;
//! - IBAN: a known country, that country's length, mod-97 = 1, compact or in groups of 4;
//! - e-mail: `local@domain.tld` with a letters-only TLD of 2+ characters.

use super::config::DetectorKind;

/// A set of [`DetectorKind`]s as a bit set (copyable, no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DetectorSet(u8);

impl DetectorSet {
    pub const EMPTY: DetectorSet = DetectorSet(0);

    pub fn all() -> Self {
        DetectorKind::ALL.into_iter().collect()
    }

    fn bit(kind: DetectorKind) -> u8 {
        match kind {
            DetectorKind::Card => 1,
            DetectorKind::Ssn => 2,
            DetectorKind::Routing => 4,
            DetectorKind::Iban => 8,
            DetectorKind::Email => 16,
        }
    }

    pub fn with(self, kind: DetectorKind) -> Self {
        DetectorSet(self.0 | Self::bit(kind))
    }

    pub fn contains(self, kind: DetectorKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<DetectorKind> for DetectorSet {
    fn from_iter<I: IntoIterator<Item = DetectorKind>>(iter: I) -> Self {
        iter.into_iter().fold(DetectorSet::EMPTY, DetectorSet::with)
    }
}

/// One finding: `text[start..end]` is a `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub kind: DetectorKind,
}

const C_DIGIT: u8 = 1;
const C_AT: u8 = 2;
const C_UPPER: u8 = 4;
/// Lowercase letters start an IBAN only for scanners hinted to expect IBANs: in free
/// text they would send every word through the IBAN check.
const C_LOWER: u8 = 8;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_digit() {
            C_DIGIT
        } else if b == b'@' {
            C_AT
        } else if b.is_ascii_uppercase() {
            C_UPPER
        } else if b.is_ascii_lowercase() {
            C_LOWER
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Digit groups evaluated at once; longer runs are evaluated in overlapping windows.
const MAX_GROUPS: usize = 32;

/// A configured detector pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanner {
    detectors: DetectorSet,
    hints: DetectorSet,
    class_mask: u8,
}

impl Scanner {
    /// `hints` say what the column is known to hold: `ssn` accepts bare 9-digit SSNs,
    /// `routing` drops the keyword requirement, `card` drops the IIN check.
    pub fn new(detectors: DetectorSet, hints: DetectorSet) -> Self {
        let mut class_mask = 0;
        if detectors.contains(DetectorKind::Card)
            || detectors.contains(DetectorKind::Ssn)
            || detectors.contains(DetectorKind::Routing)
        {
            class_mask |= C_DIGIT;
        }
        if detectors.contains(DetectorKind::Email) {
            class_mask |= C_AT;
        }
        if detectors.contains(DetectorKind::Iban) {
            class_mask |= C_UPPER;
            if hints.contains(DetectorKind::Iban) {
                class_mask |= C_LOWER;
            }
        }
        Scanner {
            detectors,
            hints,
            class_mask,
        }
    }

    /// The strictest pass over checksummed kinds, used to prove masked output is not a
    /// valid card, SSN, routing number or IBAN.
    pub fn strict() -> Self {
        let kinds = DetectorSet::EMPTY
            .with(DetectorKind::Card)
            .with(DetectorKind::Ssn)
            .with(DetectorKind::Routing)
            .with(DetectorKind::Iban);
        Scanner::new(kinds, kinds)
    }

    pub fn detectors(&self) -> DetectorSet {
        self.detectors
    }

    /// Replaces `out` with the findings in `text`, sorted by start, not overlapping.
    pub fn scan(&self, text: &[u8], out: &mut Vec<Finding>) {
        out.clear();
        let n = text.len();
        let mut i = 0;
        while i < n {
            let class = CLASS[text[i] as usize] & self.class_mask;
            if class == 0 {
                i = self.skip_plain(text, i + 1);
                continue;
            }
            let word_start = i == 0 || !text[i - 1].is_ascii_alphanumeric();
            if class == C_DIGIT {
                i = if word_start {
                    self.digit_run(text, i, out)
                } else {
                    skip_alnum(text, i)
                };
            } else if class == C_AT {
                match email_at(text, i) {
                    Some((s, e)) => {
                        push_merged(out, s, e, DetectorKind::Email);
                        i = e;
                    }
                    None => i += 1,
                }
            } else {
                let any_case = self.class_mask & C_LOWER != 0;
                match word_start.then(|| iban_at(text, i, any_case)).flatten() {
                    Some(e) => {
                        out.push(Finding {
                            start: i,
                            end: e,
                            kind: DetectorKind::Iban,
                        });
                        i = e;
                    }
                    None => i += 1,
                }
            }
        }
    }

    /// Where the next byte that could start a finding is, from `i` on: whole blocks
    /// with none are passed over a block at a time, which the compiler does with vector
    /// compares. Free text and computed columns are mostly such bytes, and scanning
    /// them one by one was the masked path's largest cost (`bench/results/issue16-*`).
    fn skip_plain(&self, text: &[u8], mut i: usize) -> usize {
        let m = self.class_mask;
        let (digit, at, upper, lower) = (
            m & C_DIGIT != 0,
            m & C_AT != 0,
            m & C_UPPER != 0,
            m & C_LOWER != 0,
        );
        while let Some(block) = block_at::<TEXT_BLOCK>(text, i) {
            let any = block.iter().fold(false, |any, &b| {
                any | (digit & b.is_ascii_digit())
                    | (at & (b == b'@'))
                    | (upper & b.is_ascii_uppercase())
                    | (lower & b.is_ascii_lowercase())
            });
            if any {
                break;
            }
            i += TEXT_BLOCK;
        }
        while i < text.len() && CLASS[text[i] as usize] & m == 0 {
            i += 1;
        }
        i
    }

    /// Whether `text` contains anything this scanner finds.
    pub fn finds_any(&self, text: &[u8]) -> bool {
        let mut out = Vec::new();
        self.scan(text, &mut out);
        !out.is_empty()
    }

    /// Evaluates the run of digit groups starting at `start`; returns where scanning
    /// continues.
    fn digit_run(&self, text: &[u8], start: usize, out: &mut Vec<Finding>) -> usize {
        let n = text.len();
        let mut groups = [(0usize, 0usize); MAX_GROUPS];
        let mut seps = [0u8; MAX_GROUPS];
        let mut k = 0;
        let mut i = start;
        let truncated = loop {
            let gs = i;
            while i < n && text[i].is_ascii_digit() {
                i += 1;
            }
            groups[k] = (gs, i);
            k += 1;
            let more =
                i + 1 < n && (text[i] == b' ' || text[i] == b'-') && text[i + 1].is_ascii_digit();
            if !more {
                break false;
            }
            if k == MAX_GROUPS {
                break true;
            }
            seps[k - 1] = text[i];
            i += 1;
        };
        let mut end = i;
        if !truncated && end < n && text[end].is_ascii_alphabetic() {
            // The last group is glued to a word ("12ab"): it is not a number on its own.
            k -= 1;
            end = skip_alnum(text, end);
        }
        let before = out.len();
        if k > 0 {
            self.evaluate(text, &groups[..k], &seps[..k], out);
        }
        if truncated {
            // A very long run is evaluated in windows. A finding has at most 19 digits,
            // so it spans at most 19 groups: resume at the 19th group from the end (or
            // after the last finding) so no window is missed and none is found twice.
            let overlap = groups[MAX_GROUPS - 19].0;
            let last = out[before..].iter().map(|f| f.end).max().unwrap_or(0);
            return overlap.max(last);
        }
        end
    }

    fn evaluate(
        &self,
        text: &[u8],
        groups: &[(usize, usize)],
        seps: &[u8],
        out: &mut Vec<Finding>,
    ) {
        let k = groups.len();
        let len = |g: usize| groups[g].1 - groups[g].0;
        let mut used = [false; MAX_GROUPS];
        let first = out.len();
        let push =
            |out: &mut Vec<Finding>, used: &mut [bool; MAX_GROUPS], a: usize, b: usize, kind| {
                out.push(Finding {
                    start: groups[a].0,
                    end: groups[b].1,
                    kind,
                });
                used[a..=b].iter_mut().for_each(|u| *u = true);
            };

        if self.detectors.contains(DetectorKind::Ssn) && k >= 3 {
            let spaced_ok = self.hints.contains(DetectorKind::Ssn);
            let mut a = 0;
            while a + 2 < k {
                let shaped = len(a) == 3 && len(a + 1) == 2 && len(a + 2) == 4;
                let sep_ok = seps[a] == seps[a + 1] && (seps[a] == b'-' || spaced_ok);
                if shaped && sep_ok && !used[a..a + 3].contains(&true) {
                    let mut d = [0u8; 9];
                    d[..3].copy_from_slice(&text[groups[a].0..groups[a].1]);
                    d[3..5].copy_from_slice(&text[groups[a + 1].0..groups[a + 1].1]);
                    d[5..].copy_from_slice(&text[groups[a + 2].0..groups[a + 2].1]);
                    if ssn_valid(&d) {
                        push(out, &mut used, a, a + 2, DetectorKind::Ssn);
                        a += 3;
                        continue;
                    }
                }
                a += 1;
            }
        }

        let bare_ssn =
            self.detectors.contains(DetectorKind::Ssn) && self.hints.contains(DetectorKind::Ssn);
        let routing = self.detectors.contains(DetectorKind::Routing);
        if bare_ssn || routing {
            for a in 0..k {
                if used[a] || len(a) != 9 {
                    continue;
                }
                let d = &text[groups[a].0..groups[a].1];
                if bare_ssn && ssn_valid(d) {
                    push(out, &mut used, a, a, DetectorKind::Ssn);
                } else if routing
                    && aba_valid(d)
                    && (self.hints.contains(DetectorKind::Routing)
                        || routing_keyword_near(text, groups[a].0, groups[a].1))
                {
                    push(out, &mut used, a, a, DetectorKind::Routing);
                }
            }
        }

        if self.detectors.contains(DetectorKind::Card) {
            let check_iin = !self.hints.contains(DetectorKind::Card);
            let mut a = 0;
            while a < k {
                if used[a] {
                    a += 1;
                    continue;
                }
                let mut digits = [0u8; 19];
                let mut count = 0;
                let mut best = None;
                for b in a..k {
                    // Cards are printed in groups of 3 or more (4-4-4-4, 4-6-5, ...)
                    // with perhaps a short last group: "4 5 6 7 ..." is a list of
                    // small numbers, not a card.
                    let short = k > 1 && len(b) < 3;
                    if used[b] || count + len(b) > 19 || (short && b == a) {
                        break;
                    }
                    digits[count..count + len(b)].copy_from_slice(&text[groups[b].0..groups[b].1]);
                    count += len(b);
                    if count >= 13
                        && luhn_valid(&digits[..count])
                        && (!check_iin || iin_known(&digits[..count]))
                    {
                        best = Some(b);
                    }
                    if short {
                        break;
                    }
                }
                match best {
                    Some(b) => {
                        push(out, &mut used, a, b, DetectorKind::Card);
                        a = b + 1;
                    }
                    None => a += 1,
                }
            }
        }
        out[first..].sort_unstable_by_key(|f| f.start);
    }
}

/// `is_ascii_alphanumeric` in two range checks, the form that vectorises best.
#[inline(always)]
pub(crate) fn alnum(b: u8) -> bool {
    ((b | 0x20).wrapping_sub(b'a') < 26) | (b.wrapping_sub(b'0') < 10)
}

/// Bytes the skip over plain text tests at once: free text has an interesting byte
/// (a capital, a digit) every few words, so its blocks are short.
const TEXT_BLOCK: usize = 32;
/// Bytes the skip over a word tests at once: the words worth skipping fast are long
/// (digests, base64, tokens).
const WORD_BLOCK: usize = 64;

fn block_at<const N: usize>(text: &[u8], i: usize) -> Option<&[u8; N]> {
    text.get(i..i.checked_add(N)?)?.try_into().ok()
}

/// The end of the word (letters and digits) at `i`. Long words (hex digests, base64,
/// tokens) go a block at a time; the fold has no early exit so that it vectorises, with
/// 256-bit compares where the CPU has them.
fn skip_alnum(text: &[u8], i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { skip_alnum_avx2(text, i) };
    }
    skip_alnum_blocks(text, i)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn skip_alnum_avx2(text: &[u8], i: usize) -> usize {
    skip_alnum_blocks(text, i)
}

#[inline(always)]
fn skip_alnum_blocks(text: &[u8], mut i: usize) -> usize {
    while let Some(block) = block_at::<WORD_BLOCK>(text, i) {
        if !block.iter().fold(true, |all, &b| all & alnum(b)) {
            break;
        }
        i += WORD_BLOCK;
    }
    while i < text.len() && text[i].is_ascii_alphanumeric() {
        i += 1;
    }
    i
}

/// Adds a finding, absorbing earlier findings it overlaps (an e-mail whose local part
/// held a number found a moment ago).
fn push_merged(out: &mut Vec<Finding>, mut start: usize, end: usize, kind: DetectorKind) {
    while let Some(last) = out.last() {
        if last.end > start {
            start = start.min(last.start);
            out.pop();
        } else {
            break;
        }
    }
    out.push(Finding { start, end, kind });
}

/// Luhn over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if v > 9 {
            return false;
        }
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

const fn lens(lo: u32, hi: u32) -> u32 {
    let mut m = 0;
    let mut l = lo;
    while l <= hi {
        m |= 1 << l;
        l += 1;
    }
    m
}

/// Issuer ranges: (prefix digits, low, high, allowed lengths as a bit mask).
const IIN: &[(usize, u32, u32, u32)] = &[
    (1, 4, 4, (1 << 13) | (1 << 16) | (1 << 19)), // Visa
    (2, 51, 55, 1 << 16),                         // Mastercard
    (4, 2221, 2720, 1 << 16),                     // Mastercard 2-series
    (2, 34, 34, 1 << 15),                         // American Express
    (2, 37, 37, 1 << 15),
    (3, 300, 305, lens(14, 19)), // Diners Club
    (2, 36, 36, lens(14, 19)),
    (2, 38, 39, lens(16, 19)),
    (4, 3528, 3589, lens(16, 19)), // JCB
    (4, 2200, 2204, lens(16, 19)), // Mir
    (1, 6, 6, lens(13, 19)),       // Discover, UnionPay, Maestro 6x, RuPay 60/65
    (2, 50, 50, lens(13, 19)),     // Maestro
    (2, 56, 58, lens(13, 19)),
    (2, 81, 82, 1 << 16),     // RuPay
    (4, 9792, 9792, 1 << 16), // Troy
];

/// Whether the digits start with an issuer prefix that issues this length.
pub fn iin_known(digits: &[u8]) -> bool {
    let n = digits.len() as u32;
    IIN.iter().any(|&(p, lo, hi, mask)| {
        digits.len() >= p && mask & (1 << n.min(31)) != 0 && {
            let v = digits[..p]
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
            (lo..=hi).contains(&v)
        }
    })
}

/// A card number as the scanner accepts it: 13-19 ASCII digits, known IIN, Luhn.
pub fn card_valid(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len())
        && digits.iter().all(u8::is_ascii_digit)
        && iin_known(digits)
        && luhn_valid(digits)
}

/// Nine ASCII digits forming an issuable SSN.
pub fn ssn_valid(d: &[u8]) -> bool {
    if d.len() != 9 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let num = |s: &[u8]| s.iter().fold(0u32, |a, &b| a * 10 + u32::from(b - b'0'));
    let (area, group, serial) = (num(&d[..3]), num(&d[3..5]), num(&d[5..]));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// The ABA 3-7-1 checksum alone, over nine ASCII digits.
pub fn aba_checksum_ok(d: &[u8]) -> bool {
    if d.len() != 9 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let v = |i: usize| u32::from(d[i] - b'0');
    (3 * (v(0) + v(3) + v(6)) + 7 * (v(1) + v(4) + v(7)) + v(2) + v(5) + v(8)) % 10 == 0
}

/// A routing number: checksum and a Federal Reserve prefix (00-12, 21-32, 61-72, 80).
pub fn aba_valid(d: &[u8]) -> bool {
    if !aba_checksum_ok(d) {
        return false;
    }
    let p = u32::from(d[0] - b'0') * 10 + u32::from(d[1] - b'0');
    matches!(p, 0..=12 | 21..=32 | 61..=72 | 80)
}

const ROUTING_KEYWORDS: [&[u8]; 4] = [b"routing", b"aba", b"rtn", b"transit"];

fn routing_keyword_near(text: &[u8], start: usize, end: usize) -> bool {
    let before = &text[start.saturating_sub(40)..start];
    let after = &text[end..(end + 24).min(text.len())];
    [before, after].iter().any(|w| {
        ROUTING_KEYWORDS
            .iter()
            .any(|k| w.windows(k.len()).any(|x| x.eq_ignore_ascii_case(k)))
    })
}

/// IBAN lengths by country (SWIFT registry).
const IBAN_LEN: &[([u8; 2], u8)] = &[
    (*b"AD", 24),
    (*b"AE", 23),
    (*b"AL", 28),
    (*b"AT", 20),
    (*b"AZ", 28),
    (*b"BA", 20),
    (*b"BE", 16),
    (*b"BG", 22),
    (*b"BH", 22),
    (*b"BI", 27),
    (*b"BR", 29),
    (*b"BY", 28),
    (*b"CH", 21),
    (*b"CR", 22),
    (*b"CY", 28),
    (*b"CZ", 24),
    (*b"DE", 22),
    (*b"DJ", 27),
    (*b"DK", 18),
    (*b"DO", 28),
    (*b"EE", 20),
    (*b"EG", 29),
    (*b"ES", 24),
    (*b"FI", 18),
    (*b"FK", 18),
    (*b"FO", 18),
    (*b"FR", 27),
    (*b"GB", 22),
    (*b"GE", 22),
    (*b"GI", 23),
    (*b"GL", 18),
    (*b"GR", 27),
    (*b"GT", 28),
    (*b"HN", 28),
    (*b"HR", 21),
    (*b"HU", 28),
    (*b"IE", 22),
    (*b"IL", 23),
    (*b"IQ", 23),
    (*b"IS", 26),
    (*b"IT", 27),
    (*b"JO", 30),
    (*b"KW", 30),
    (*b"KZ", 20),
    (*b"LB", 28),
    (*b"LC", 32),
    (*b"LI", 21),
    (*b"LT", 20),
    (*b"LU", 20),
    (*b"LV", 21),
    (*b"LY", 25),
    (*b"MC", 27),
    (*b"MD", 24),
    (*b"ME", 22),
    (*b"MK", 19),
    (*b"MN", 20),
    (*b"MR", 27),
    (*b"MT", 31),
    (*b"MU", 30),
    (*b"NI", 28),
    (*b"NL", 18),
    (*b"NO", 15),
    (*b"OM", 23),
    (*b"PK", 24),
    (*b"PL", 28),
    (*b"PS", 29),
    (*b"PT", 25),
    (*b"QA", 29),
    (*b"RO", 24),
    (*b"RS", 22),
    (*b"RU", 33),
    (*b"SA", 24),
    (*b"SC", 31),
    (*b"SD", 18),
    (*b"SE", 24),
    (*b"SI", 19),
    (*b"SK", 24),
    (*b"SM", 27),
    (*b"SO", 23),
    (*b"ST", 25),
    (*b"SV", 28),
    (*b"TL", 23),
    (*b"TN", 24),
    (*b"TR", 26),
    (*b"UA", 29),
    (*b"VA", 22),
    (*b"VG", 24),
    (*b"XK", 20),
    (*b"YE", 30),
];

/// The IBAN length for a country code, if it has IBANs.
pub fn iban_length(country: [u8; 2]) -> Option<usize> {
    IBAN_LEN
        .binary_search_by_key(&country, |(c, _)| *c)
        .ok()
        .map(|i| usize::from(IBAN_LEN[i].1))
}

/// The ISO 7064 mod-97 remainder of a compact IBAN (uppercase letters and digits);
/// `None` on another byte. A real IBAN gives 1.
pub fn iban_mod97(compact: &[u8]) -> Option<u32> {
    if compact.len() < 4 {
        return None;
    }
    let (head, tail) = compact.split_at(4);
    let mut r = 0u32;
    for &c in tail.iter().chain(head) {
        r = match c {
            b'0'..=b'9' => (r * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (r * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return None,
        };
    }
    Some(r)
}

/// A compact IBAN: known country, its length, check digits, mod-97 = 1.
pub fn iban_valid(compact: &[u8]) -> bool {
    compact.len() >= 4
        && compact[..2].iter().all(u8::is_ascii_uppercase)
        && compact[2..4].iter().all(u8::is_ascii_digit)
        && iban_length([compact[0], compact[1]]) == Some(compact.len())
        && iban_mod97(compact) == Some(1)
}

/// An IBAN starting at `i` (compact, or printed in groups of four): its end. With
/// `any_case`, lowercase letters count as their uppercase (`lower(iban)`).
fn iban_at(text: &[u8], i: usize, any_case: bool) -> Option<usize> {
    let n = text.len();
    let letter = |c: u8| c.is_ascii_uppercase() || (any_case && c.is_ascii_lowercase());
    if i + 4 > n
        || !letter(text[i + 1])
        || !text[i + 2].is_ascii_digit()
        || !text[i + 3].is_ascii_digit()
    {
        return None;
    }
    let want = iban_length([
        text[i].to_ascii_uppercase(),
        text[i + 1].to_ascii_uppercase(),
    ])?;
    let body = |c: u8| c.is_ascii_digit() || letter(c);
    let mut buf = [0u8; 34];
    let (mut count, mut j) = (0, i);
    while count < want && j < n {
        let c = text[j];
        if body(c) {
            buf[count] = c.to_ascii_uppercase();
            count += 1;
            j += 1;
        } else if c == b' ' && count % 4 == 0 && j + 1 < n && body(text[j + 1]) {
            j += 1;
        } else {
            break;
        }
    }
    if count != want || (j < n && text[j].is_ascii_alphanumeric()) {
        return None;
    }
    (iban_mod97(&buf[..want]) == Some(1)).then_some(j)
}

fn email_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn email_domain(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'.' || c == b'-'
}

/// An e-mail address around the `@` at `at`: its `(start, end)`.
fn email_at(text: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut s = at;
    let lo = at.saturating_sub(64);
    while s > lo && email_local(text[s - 1]) {
        s -= 1;
    }
    while s < at && text[s] == b'.' {
        s += 1;
    }
    if s == at {
        return None;
    }
    let hi = (at + 1 + 255).min(text.len());
    let mut e = at + 1;
    while e < hi && email_domain(text[e]) {
        e += 1;
    }
    // A sentence may end right after the address.
    while e > at + 1 && matches!(text[e - 1], b'.' | b'-') {
        e -= 1;
    }
    let domain = &text[at + 1..e];
    let dot = memchr::memrchr(b'.', domain)?;
    let tld = &domain[dot + 1..];
    let labels_ok = !domain.starts_with(b".") && !domain.windows(2).any(|w| w == b"..");
    (labels_ok && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)).then_some((s, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(scanner: &Scanner, text: &str) -> Vec<(String, DetectorKind)> {
        let mut out = Vec::new();
        scanner.scan(text.as_bytes(), &mut out);
        out.iter()
            .map(|f| (text[f.start..f.end].to_owned(), f.kind))
            .collect()
    }

    fn all() -> Scanner {
        Scanner::new(DetectorSet::all(), DetectorSet::EMPTY)
    }

    proptest::proptest! {
        /// The block-wise skips stop exactly where a byte-by-byte walk would, whatever
        /// the position of the interesting byte inside or across blocks.
        #[test]
        fn block_skips_match_a_byte_walk(
            text in proptest::collection::vec(proptest::sample::select(
                b"aZ09 @-.x`{[/:\xc3\x80".to_vec()), 0..200),
            lead in 0usize..150,
            from in 0usize..160,
        ) {
            let mut text = text;
            // Long plain or alphanumeric stretches, so whole blocks are skipped too.
            text.splice(0..0, std::iter::repeat_n(b'q', lead));
            let from = from.min(text.len());
            let mut alnum = from;
            while alnum < text.len() && text[alnum].is_ascii_alphanumeric() {
                alnum += 1;
            }
            proptest::prop_assert_eq!(skip_alnum(&text, from), alnum);
            for hints in [DetectorSet::EMPTY, DetectorSet::all()] {
                for kinds in [DetectorSet::all(), DetectorSet::EMPTY.with(DetectorKind::Email)] {
                    let s = Scanner::new(kinds, hints);
                    let mut plain = from;
                    while plain < text.len() && CLASS[text[plain] as usize] & s.class_mask == 0 {
                        plain += 1;
                    }
                    proptest::prop_assert_eq!(s.skip_plain(&text, from), plain);
                }
            }
        }
    }

    #[test]
    fn alnum_is_is_ascii_alphanumeric() {
        for b in 0..=255u8 {
            assert_eq!(alnum(b), b.is_ascii_alphanumeric(), "{b:#x}");
        }
    }

    #[test]
    fn long_words_and_plain_runs_keep_their_findings() {
        // A card right after a long hex word and after a long run of plain text.
        let hex = "c4ca4238a0b923820dcc509a6f75849b".repeat(9);
        let t = format!("{hex} 4111 1111 1111 1111 {} 078-05-1120", "x ".repeat(40));
        let found = find(&all(), &t);
        assert_eq!(
            found,
            vec![
                ("4111 1111 1111 1111".to_owned(), DetectorKind::Card),
                ("078-05-1120".to_owned(), DetectorKind::Ssn),
            ]
        );
        // Digits glued inside a long word are not a number.
        assert!(find(&all(), &format!("{hex}4111111111111111")).is_empty());
    }

    #[test]
    fn luhn_and_iin() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(luhn_valid(b"378282246310005"));
        assert!(card_valid(b"4111111111111111"));
        assert!(card_valid(b"5555555555554444"));
        assert!(card_valid(b"378282246310005"));
        assert!(card_valid(b"6011111111111117"));
        assert!(card_valid(b"3530111333300000"));
        assert!(card_valid(b"2223003122003222"));
        // Luhn-valid but no issuer: a 16-digit id starting with 1, or Amex at 16 digits.
        assert!(luhn_valid(b"1234567812345670"));
        assert!(!card_valid(b"1234567812345670"));
        assert!(!card_valid(b"3782822463100053"));
        assert!(!card_valid(b"411111111111"));
    }

    #[test]
    fn cards_in_text() {
        let s = all();
        assert_eq!(
            find(&s, "pay 4111 1111 1111 1111 now"),
            [("4111 1111 1111 1111".into(), DetectorKind::Card)]
        );
        assert_eq!(
            find(&s, "card:4111-1111-1111-1111."),
            [("4111-1111-1111-1111".into(), DetectorKind::Card)]
        );
        assert_eq!(
            find(&s, "amex 3782 822463 10005"),
            [("3782 822463 10005".into(), DetectorKind::Card)]
        );
        // A card followed by another number is still found at group boundaries.
        assert_eq!(
            find(&s, "4111 1111 1111 1111 2024"),
            [("4111 1111 1111 1111".into(), DetectorKind::Card)]
        );
        // A random id failing Luhn stays; so does a card glued into a word or a longer run.
        assert!(find(&s, "order 4111111111111112").is_empty());
        assert!(find(&s, "ID4111111111111111").is_empty());
        assert!(find(&s, "41111111111111110").is_empty());
        assert!(find(&s, "4111111111111111abc").is_empty());
    }

    #[test]
    fn long_runs_are_scanned_to_the_end() {
        let s = all();
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("{} ", i % 10));
        }
        assert!(
            find(&s, &text).is_empty(),
            "single digits do not form cards"
        );
        assert_eq!(
            find(&s, "4111 1111 1111 9"),
            [("4111 1111 1111 9".into(), DetectorKind::Card)]
        );
        text.push_str("4111 1111 1111 1111 9");
        let found = find(&s, &text);
        assert_eq!(found, [("4111 1111 1111 1111".into(), DetectorKind::Card)]);
        let dashes = format!("{}123-45-6789", "1-".repeat(200));
        assert_eq!(
            find(&s, &dashes),
            [("123-45-6789".into(), DetectorKind::Ssn)]
        );
    }

    #[test]
    fn ssns() {
        let s = all();
        assert_eq!(
            find(&s, "ssn 123-45-6789"),
            [("123-45-6789".into(), DetectorKind::Ssn)]
        );
        for bad in [
            "000-45-6789",
            "666-45-6789",
            "900-45-6789",
            "999-45-6789",
            "123-00-6789",
            "123-45-0000",
        ] {
            assert!(find(&s, bad).is_empty(), "{bad}");
        }
        assert!(
            find(&s, "123456789").is_empty(),
            "bare 9 digits are not an SSN"
        );
        assert!(find(&s, "123 45 6789").is_empty());
        let hinted = Scanner::new(
            DetectorSet::all(),
            DetectorSet::EMPTY.with(DetectorKind::Ssn),
        );
        assert_eq!(
            find(&hinted, "123456789"),
            [("123456789".into(), DetectorKind::Ssn)]
        );
        assert_eq!(
            find(&hinted, "123 45 6789"),
            [("123 45 6789".into(), DetectorKind::Ssn)]
        );
        assert!(find(&hinted, "666456789").is_empty());
        assert!(ssn_valid(b"899999999"));
    }

    #[test]
    fn routing_numbers() {
        let s = all();
        assert!(aba_valid(b"021000021"));
        assert!(aba_valid(b"011000015"));
        assert!(!aba_valid(b"021000022"));
        assert!(!aba_valid(b"921000021") || !aba_checksum_ok(b"921000021"));
        assert!(find(&s, "021000021").is_empty(), "no keyword, no hint");
        assert_eq!(
            find(&s, "Routing no. 021000021"),
            [("021000021".into(), DetectorKind::Routing)]
        );
        assert_eq!(
            find(&s, "021000021 (ABA)"),
            [("021000021".into(), DetectorKind::Routing)]
        );
        let hinted = Scanner::new(
            DetectorSet::all(),
            DetectorSet::EMPTY.with(DetectorKind::Routing),
        );
        assert_eq!(
            find(&hinted, "021000021"),
            [("021000021".into(), DetectorKind::Routing)]
        );
        assert!(find(&hinted, "021000022").is_empty());
    }

    #[test]
    fn ibans() {
        let s = all();
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(!iban_valid(b"DE89370400440532013001"));
        assert!(!iban_valid(b"DE8937040044053201300"));
        assert_eq!(
            find(&s, "iban DE89 3704 0044 0532 0130 00, thanks"),
            [("DE89 3704 0044 0532 0130 00".into(), DetectorKind::Iban)]
        );
        assert_eq!(
            find(&s, "GB82WEST12345698765432"),
            [("GB82WEST12345698765432".into(), DetectorKind::Iban)]
        );
        assert!(find(&s, "DE89370400440532013001").is_empty());
        assert!(find(&s, "XDE89370400440532013000").is_empty());
        // Lowercase only where the column is known to hold IBANs.
        assert!(find(&s, "gb82west12345698765432").is_empty());
        let hinted = Scanner::new(DetectorSet::all(), DetectorSet::all());
        assert_eq!(
            find(&hinted, "was gb82west12345698765432."),
            [("gb82west12345698765432".into(), DetectorKind::Iban)]
        );
        assert!(find(&hinted, "was gb82west12345698765431.").is_empty());
    }

    #[test]
    fn emails() {
        let s = all();
        assert_eq!(
            find(&s, "mail jane.doe+x@example.co.uk."),
            [("jane.doe+x@example.co.uk".into(), DetectorKind::Email)]
        );
        assert!(find(&s, "a @ b").is_empty());
        assert!(find(&s, "x@localhost").is_empty());
        assert!(find(&s, "x@host.c0m").is_empty());
        // A number in the local part merges into the address.
        assert_eq!(
            find(&s, "4111111111111111@example.com"),
            [("4111111111111111@example.com".into(), DetectorKind::Email)]
        );
    }

    #[test]
    fn only_enabled_detectors_run() {
        let cards = Scanner::new(
            DetectorSet::EMPTY.with(DetectorKind::Card),
            DetectorSet::EMPTY,
        );
        assert!(find(&cards, "123-45-6789 a@b.com DE89370400440532013000").is_empty());
        assert_eq!(find(&cards, "4111111111111111").len(), 1);
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        let s = Scanner::new(DetectorSet::all(), DetectorSet::all());
        let mut out = Vec::new();
        for text in [
            &b""[..],
            b"@",
            b"1",
            b"1-",
            b"-1",
            b"DE",
            b"DE8",
            b"DE89 ",
            b"\xff@\xfe.",
            b"1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9",
        ] {
            s.scan(text, &mut out);
        }
    }
}
