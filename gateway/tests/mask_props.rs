//! Property tests for `portcullis::mask`: for any rows and any split of the stream into
//! reads, masked `DataRow` and `COPY` output is well-formed, columns without a rule come
//! out byte-identical, and no valid card, SSN, routing number or IBAN of a masked column
//! or of scanned text survives. Arbitrary bytes never make the masker panic.

use bytes::{Buf, Bytes, BytesMut};
use portcullis::mask::detect::{self, DetectorSet, Scanner};
use portcullis::mask::{
    Catalog, ColumnDesc, CopyFormat, DetectorKind, MaskConfig, MaskStats, Policy, RowPlan, Subject,
};
use portcullis::protocol::backend::{copy_data, copy_out_response};
use proptest::prelude::*;

const OID: u32 = 16384;
const NAMES: [&str; 7] = [
    "id",
    "full_name",
    "ssn",
    "card_number",
    "notes",
    "blob",
    "email",
];
const TYPES: [u32; 7] = [23, 25, 25, 25, 25, 17, 25];
/// Columns no rule covers.
const CLEAR: [usize; 3] = [0, 1, 5];

fn policy(notes_strategy: &str) -> Policy {
    let extra = match notes_strategy {
        "partial" => "keep_last = 4\n",
        "redact" => "text = \"[REDACTED]\"\n",
        _ => "",
    };
    let toml = format!(
        r#"
        hash_key = "proptest-key-0123456789"
        [[rule]]
        name = "ssn"
        column = "public.accounts.ssn"
        strategy = "format_preserving"
        [[rule]]
        name = "card"
        column_name = "*card_number"
        strategy = "partial"
        keep_last = 4
        [[rule]]
        name = "notes"
        column = "public.*.notes"
        detectors = ["card", "ssn", "iban", "email", "routing"]
        strategy = "{notes_strategy}"
        {extra}
        [[rule]]
        name = "email"
        column = "public.accounts.email"
        strategy = "hash"
        "#
    );
    let cfg: MaskConfig = toml::from_str(&toml).unwrap();
    Policy::compile(&cfg).unwrap()
}

fn catalog() -> Catalog {
    let mut c = Catalog::new();
    for (i, n) in NAMES.iter().enumerate() {
        c.insert_column(OID, "public", "accounts", i as i16 + 1, n);
    }
    c
}

/// Aliased labels: rules must follow the table OID and attnum, not the label.
fn columns(binary: bool) -> Vec<ColumnDesc> {
    (0..NAMES.len())
        .map(|i| ColumnDesc {
            name: format!("c{i}").into_bytes(),
            table_oid: OID,
            attnum: i as i16 + 1,
            type_oid: TYPES[i],
            type_len: -1,
            type_mod: -1,
            format: i16::from(binary),
        })
        .collect()
}

fn subject() -> Subject {
    Subject::new("agent", ["reader"])
}

// ---- generators of valid secrets

fn with_check_digit(mut body: Vec<u8>, ok: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    for d in b'0'..=b'9' {
        body.push(d);
        if ok(&body) {
            return body;
        }
        body.pop();
    }
    unreachable!("some check digit always fits")
}

fn group(digits: &[u8], sep: Option<u8>) -> String {
    let mut s = Vec::new();
    for (i, chunk) in digits.chunks(4).enumerate() {
        if i > 0 {
            s.extend(sep);
        }
        s.extend_from_slice(chunk);
    }
    String::from_utf8(s).unwrap()
}

fn card() -> impl Strategy<Value = String> {
    let brands = vec![
        ("4", 16),
        ("4", 13),
        ("4", 19),
        ("51", 16),
        ("55", 16),
        ("2221", 16),
        ("34", 15),
        ("37", 15),
        ("6011", 16),
        ("3528", 17),
        ("62", 19),
    ];
    (
        prop::sample::select(brands),
        prop::collection::vec(b'0'..=b'9', 19),
        prop::sample::select(vec![None, Some(b' '), Some(b'-')]),
    )
        .prop_map(|((prefix, len), digits, sep)| {
            let mut body = prefix.as_bytes().to_vec();
            body.extend_from_slice(&digits[..len - 1 - prefix.len()]);
            let full = with_check_digit(body, detect::card_valid);
            group(&full, sep)
        })
}

fn ssn() -> impl Strategy<Value = String> {
    (1u32..900, 1u32..100, 1u32..10000)
        .prop_filter("666 is never issued", |(a, _, _)| *a != 666)
        .prop_map(|(a, g, s)| format!("{a:03}-{g:02}-{s:04}"))
}

fn routing() -> impl Strategy<Value = String> {
    let prefixes: Vec<u32> = (0..=12).chain(21..=32).chain(61..=72).chain([80]).collect();
    (
        prop::sample::select(prefixes),
        prop::collection::vec(b'0'..=b'9', 6),
    )
        .prop_map(|(p, d)| {
            let mut body = format!("{p:02}").into_bytes();
            body.extend_from_slice(&d);
            let full = with_check_digit(body, detect::aba_valid);
            format!("routing {}", String::from_utf8(full).unwrap())
        })
}

fn iban() -> impl Strategy<Value = String> {
    let countries = vec![
        ("DE", 18, 0),
        ("GB", 14, 4),
        ("NL", 10, 4),
        ("FR", 23, 0),
        ("NO", 11, 0),
    ];
    (
        prop::sample::select(countries),
        prop::collection::vec(b'0'..=b'9', 23),
        prop::collection::vec(b'A'..=b'Z', 4),
        any::<bool>(),
    )
        .prop_map(|((cc, digits, letters), d, l, spaced)| {
            let mut bban = l[..letters].to_vec();
            bban.extend_from_slice(&d[..digits]);
            let mut probe = cc.as_bytes().to_vec();
            probe.extend_from_slice(b"00");
            probe.extend_from_slice(&bban);
            let check = 98 - detect::iban_mod97(&probe).unwrap();
            let mut full = cc.as_bytes().to_vec();
            full.extend_from_slice(format!("{check:02}").as_bytes());
            full.extend_from_slice(&bban);
            assert!(detect::iban_valid(&full));
            if spaced {
                group(&full, Some(b' '))
            } else {
                String::from_utf8(full).unwrap()
            }
        })
}

fn email() -> impl Strategy<Value = String> {
    "[a-z]{3,8}(\\.[a-z]{1,5})?@[a-z]{3,8}\\.(com|org|io|co\\.uk)"
}

#[derive(Debug, Clone)]
enum Token {
    Word(String),
    Number(String),
    Secret(String),
}

fn token() -> impl Strategy<Value = Token> {
    prop_oneof![
        3 => "[a-z]{1,8}".prop_map(Token::Word),
        2 => "[0-9]{1,20}".prop_map(Token::Number),
        1 => card().prop_map(Token::Secret),
        1 => ssn().prop_map(Token::Secret),
        1 => routing().prop_map(Token::Secret),
        1 => iban().prop_map(Token::Secret),
        1 => email().prop_map(Token::Secret),
    ]
}

#[derive(Debug, Clone)]
struct Row {
    id: String,
    full_name: Vec<u8>,
    ssn: String,
    card: String,
    notes: String,
    secrets: Vec<String>,
    blob: Option<Vec<u8>>,
    email: Option<String>,
}

impl Row {
    fn text_fields(&self) -> Vec<Option<Vec<u8>>> {
        vec![
            Some(self.id.clone().into_bytes()),
            Some(self.full_name.clone()),
            Some(self.ssn.clone().into_bytes()),
            Some(self.card.clone().into_bytes()),
            Some(self.notes.clone().into_bytes()),
            self.blob.clone(),
            self.email.clone().map(String::into_bytes),
        ]
    }

    /// Binary format: `int4` id as 4 bytes, the rest as is (text and bytea).
    fn binary_fields(&self) -> Vec<Option<Vec<u8>>> {
        let mut f = self.text_fields();
        f[0] = Some(self.id.parse::<i32>().unwrap().to_be_bytes().to_vec());
        f
    }
}

fn row() -> impl Strategy<Value = Row> {
    (
        any::<i32>(),
        // Names with bytes that COPY must escape or quote.
        prop::collection::vec(
            prop::sample::select(b"abcXYZ \t\n\\,\"'\xc3\xa9".to_vec()),
            0..24,
        ),
        ssn(),
        card(),
        prop::collection::vec(token(), 0..12),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        prop::option::of(email()),
    )
        .prop_map(|(id, full_name, ssn, card, tokens, blob, email)| {
            let mut secrets = Vec::new();
            let words: Vec<String> = tokens
                .into_iter()
                .map(|t| match t {
                    Token::Word(w) | Token::Number(w) => w,
                    Token::Secret(s) => {
                        secrets.push(s.strip_prefix("routing ").unwrap_or(&s).to_owned());
                        s
                    }
                })
                .collect();
            Row {
                id: id.to_string(),
                full_name,
                ssn,
                card,
                notes: words.join(" "),
                secrets,
                blob,
                email,
            }
        })
}

// ---- wire helpers

fn data_row(fields: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut body = (fields.len() as i16).to_be_bytes().to_vec();
    for f in fields {
        match f {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let mut frame = vec![b'D'];
    frame.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Parses a `DataRow` strictly: any inconsistency fails the test.
fn parse_data_row(frame: &[u8]) -> Vec<Option<Vec<u8>>> {
    assert_eq!(frame[0], b'D');
    let mut b = &frame[1..];
    assert_eq!(b.get_i32() as usize, frame.len() - 1, "length word");
    let n = b.get_i16();
    let mut out = Vec::new();
    for _ in 0..n {
        let len = b.get_i32();
        if len == -1 {
            out.push(None);
        } else {
            assert!(len >= 0 && len as usize <= b.len(), "field length");
            out.push(Some(b[..len as usize].to_vec()));
            b.advance(len as usize);
        }
    }
    assert!(b.is_empty(), "trailing bytes");
    out
}

fn frame_stream<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &stream[w[0]..w[1]]).collect()
}

// ---- the checks

fn digits(s: &[u8]) -> Vec<u8> {
    s.iter().copied().filter(u8::is_ascii_digit).collect()
}

fn checksummed() -> Scanner {
    let kinds = DetectorSet::EMPTY
        .with(DetectorKind::Card)
        .with(DetectorKind::Ssn)
        .with(DetectorKind::Iban)
        .with(DetectorKind::Routing);
    Scanner::new(kinds, DetectorSet::EMPTY)
}

fn check_row(input: &Row, output: &[Option<Vec<u8>>], binary: bool) {
    let fields = if binary {
        input.binary_fields()
    } else {
        input.text_fields()
    };
    assert_eq!(output.len(), fields.len());
    for &c in &CLEAR {
        assert_eq!(
            output[c], fields[c],
            "column {} must be untouched",
            NAMES[c]
        );
    }
    let strict = Scanner::strict();
    // ssn: same shape, never a valid SSN.
    let ssn = output[2].as_ref().expect("ssn not null");
    assert_eq!(ssn.len(), input.ssn.len());
    assert!(
        !detect::ssn_valid(&digits(ssn)),
        "{}",
        String::from_utf8_lossy(ssn)
    );
    assert!(!strict.finds_any(ssn));
    // card: last four kept, the rest masked.
    let card = output[3].as_ref().expect("card not null");
    assert!(card.ends_with(&input.card.as_bytes()[input.card.len() - 4..]));
    assert!(!strict.finds_any(card) && !detect::card_valid(&digits(card)));
    // notes: no inserted secret verbatim, nothing checksummed found afterwards.
    let notes = output[4].as_ref().expect("notes not null");
    let notes_text = String::from_utf8_lossy(notes);
    for s in &input.secrets {
        assert!(
            !notes_text.contains(s.as_str()),
            "secret {s:?} survived in {notes_text:?}"
        );
    }
    let mut found = Vec::new();
    checksummed().scan(notes, &mut found);
    assert!(found.is_empty(), "{found:?} in {notes_text:?}");
    // email: a hash token, never the address.
    match (&input.email, &output[6]) {
        (None, None) => {}
        (Some(e), Some(o)) => {
            assert_ne!(o, e.as_bytes());
            assert!(o.iter().all(u8::is_ascii_lowercase));
        }
        other => panic!("email nullness changed: {other:?}"),
    }
}

fn mask_rows(plan: &mut RowPlan, rows: &[Row], cuts: &[usize]) -> Vec<Vec<Option<Vec<u8>>>> {
    let stream: Vec<u8> = rows
        .iter()
        .flat_map(|r| data_row(&r.text_fields()))
        .collect();
    // A minimal framer standing in for the gateway's: accumulate reads, cut whole frames.
    let mut buf = BytesMut::new();
    let mut stats = MaskStats::new();
    let mut out = Vec::new();
    for read in frame_stream(&stream, cuts) {
        buf.extend_from_slice(read);
        while buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < len + 1 {
                break;
            }
            let frame = buf.split_to(len + 1).freeze();
            let masked = plan.mask_data_row(frame, &mut stats).unwrap();
            out.push(parse_data_row(&masked));
        }
    }
    assert!(buf.is_empty());
    assert_eq!(stats.rows, rows.len() as u64);
    out
}

// ---- COPY encodings (the server side)

fn text_escape(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

fn encode_copy(rows: &[Row], kind: u8) -> Vec<u8> {
    let mut out = Vec::new();
    if kind == 2 {
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
    }
    for r in rows {
        match kind {
            0 | 1 => {
                for (i, f) in r.text_fields().iter().enumerate() {
                    if i > 0 {
                        out.push(if kind == 0 { b'\t' } else { b',' });
                    }
                    match (f, kind) {
                        (None, 0) => out.extend_from_slice(b"\\N"),
                        (None, _) => {}
                        (Some(v), 0) => text_escape(&bytea_text(i, v), &mut out),
                        (Some(v), _) => {
                            out.push(b'"');
                            for &b in &bytea_text(i, v) {
                                if b == b'"' {
                                    out.push(b'"');
                                }
                                out.push(b);
                            }
                            out.push(b'"');
                        }
                    }
                }
                out.push(b'\n');
            }
            _ => {
                out.extend_from_slice(&7i16.to_be_bytes());
                for f in r.binary_fields() {
                    match f {
                        Some(v) => {
                            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            out.extend_from_slice(&v);
                        }
                        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
            }
        }
    }
    if kind == 2 {
        out.extend_from_slice(b"\xff\xff");
    }
    out
}

/// Text and CSV COPY carry `bytea` as hex text; keep the generated bytes for comparison
/// by treating the blob column as opaque text of its hex form.
fn bytea_text(col: usize, v: &[u8]) -> Vec<u8> {
    if col == 5 {
        let mut s = b"\\x".to_vec();
        s.extend(v.iter().flat_map(|b| format!("{b:02x}").into_bytes()));
        s
    } else {
        v.to_vec()
    }
}

fn decode_copy(data: &[u8], kind: u8) -> Vec<Vec<Option<Vec<u8>>>> {
    let mut rows = Vec::new();
    match kind {
        0 => {
            for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let mut fields = Vec::new();
                let mut cur = Vec::new();
                let mut raw = Vec::new();
                let mut i = 0;
                while i <= line.len() {
                    if i == line.len() || line[i] == b'\t' {
                        fields.push(if raw == b"\\N" {
                            None
                        } else {
                            Some(std::mem::take(&mut cur))
                        });
                        cur.clear();
                        raw.clear();
                        i += 1;
                        continue;
                    }
                    if line[i] == b'\\' && i + 1 < line.len() {
                        raw.extend_from_slice(&line[i..i + 2]);
                        cur.push(match line[i + 1] {
                            b't' => b'\t',
                            b'n' => b'\n',
                            b'r' => b'\r',
                            c => c,
                        });
                        i += 2;
                        continue;
                    }
                    raw.push(line[i]);
                    cur.push(line[i]);
                    i += 1;
                }
                rows.push(fields);
            }
        }
        1 => {
            let mut fields = Vec::new();
            let mut cur = Vec::new();
            let (mut in_quote, mut quoted) = (false, false);
            let mut i = 0;
            while i < data.len() {
                let b = data[i];
                if in_quote {
                    if b == b'"' && data.get(i + 1) == Some(&b'"') {
                        cur.push(b'"');
                        i += 1;
                    } else if b == b'"' {
                        in_quote = false;
                    } else {
                        cur.push(b);
                    }
                } else if b == b'"' {
                    in_quote = true;
                    quoted = true;
                } else if b == b',' || b == b'\n' {
                    let v = std::mem::take(&mut cur);
                    fields.push(if v.is_empty() && !quoted {
                        None
                    } else {
                        Some(v)
                    });
                    quoted = false;
                    if b == b'\n' {
                        rows.push(std::mem::take(&mut fields));
                    }
                } else {
                    cur.push(b);
                }
                i += 1;
            }
            assert!(fields.is_empty() && cur.is_empty() && !in_quote);
        }
        _ => {
            assert_eq!(&data[..11], b"PGCOPY\n\xff\r\n\0");
            let mut b = &data[19..];
            loop {
                let n = b.get_i16();
                if n == -1 {
                    break;
                }
                let mut fields = Vec::new();
                for _ in 0..n {
                    let len = b.get_i32();
                    if len < 0 {
                        fields.push(None);
                    } else {
                        fields.push(Some(b[..len as usize].to_vec()));
                        b.advance(len as usize);
                    }
                }
                rows.push(fields);
            }
            assert!(b.is_empty());
        }
    }
    rows
}

const NOTES_STRATEGIES: [&str; 5] = ["redact", "format_preserving", "hash", "partial", "null"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn data_rows_any_reads(rows in prop::collection::vec(row(), 1..12),
                           cuts in prop::collection::vec(any::<usize>(), 0..16),
                           strategy in 0usize..4) {
        let p = policy(NOTES_STRATEGIES[strategy]);
        let mut plan = p.plan(&subject(), &columns(false), &catalog()).unwrap();
        let out = mask_rows(&mut plan, &rows, &cuts);
        prop_assert_eq!(out.len(), rows.len());
        for (r, o) in rows.iter().zip(&out) {
            check_row(r, o, false);
        }
    }

    #[test]
    fn copy_any_split(rows in prop::collection::vec(row(), 0..10),
                      cuts in prop::collection::vec(any::<usize>(), 0..24),
                      kind in 0u8..3,
                      strategy in 0usize..4) {
        let p = policy(NOTES_STRATEGIES[strategy]);
        let binary = kind == 2;
        let format = if kind == 1 { CopyFormat::csv() } else { CopyFormat::text() };
        let mut plan = p
            .plan_copy(&subject(), Some(&columns(binary)), &catalog(), &copy_out_response(binary, 7), format)
            .unwrap();
        let stream = encode_copy(&rows, kind);
        let mut stats = MaskStats::new();
        let mut payload = Vec::new();
        for read in frame_stream(&stream, &cuts) {
            let out = plan.mask_copy_data(copy_data(read), &mut stats).unwrap();
            if out.is_empty() {
                continue;
            }
            prop_assert_eq!(out[0], b'd');
            prop_assert_eq!(i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize, out.len() - 1);
            payload.extend_from_slice(&out[5..]);
        }
        plan.finish().unwrap();
        let decoded = decode_copy(&payload, kind);
        prop_assert_eq!(decoded.len(), rows.len());
        for (r, mut o) in rows.iter().zip(decoded) {
            if !binary {
                // Compare the blob in the form it was sent.
                prop_assert_eq!(o[5].clone(), r.blob.as_ref().map(|b| bytea_text(5, b)));
                o[5] = r.blob.clone();
            }
            check_row(r, &o, binary);
        }
    }

    #[test]
    fn notes_null_strategy_nulls_only_values_with_findings(rows in prop::collection::vec(row(), 1..8)) {
        let p = policy("null");
        let mut plan = p.plan(&subject(), &columns(false), &catalog()).unwrap();
        let out = mask_rows(&mut plan, &rows, &[]);
        let all = Scanner::new(DetectorSet::all(), DetectorSet::EMPTY);
        for (r, o) in rows.iter().zip(&out) {
            prop_assert_eq!(o[4].is_none(), all.finds_any(r.notes.as_bytes()));
        }
    }

    #[test]
    fn arbitrary_data_rows_never_panic(body in prop::collection::vec(any::<u8>(), 0..96), fix_len in any::<bool>()) {
        let p = policy("redact");
        let mut plan = p.plan(&subject(), &columns(false), &catalog()).unwrap();
        let mut frame = vec![b'D'];
        if fix_len {
            frame.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        }
        frame.extend_from_slice(&body);
        let _ = plan.mask_data_row(frame.into(), &mut MaskStats::new());
    }

    #[test]
    fn arbitrary_copy_data_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..6),
                                        kind in 0u8..3) {
        let p = policy("format_preserving");
        let binary = kind == 2;
        let format = if kind == 1 { CopyFormat::csv() } else { CopyFormat::text() };
        let mut plan = p
            .plan_copy(&subject(), Some(&columns(binary)), &catalog(), &copy_out_response(binary, 7), format)
            .unwrap()
            .with_max_carry(256);
        for c in chunks {
            if plan.mask_copy_data(copy_data(&c), &mut MaskStats::new()).is_err() {
                break;
            }
        }
        let _ = plan.finish();
    }
}

#[test]
fn exempt_role_sees_raw_rows() {
    let cfg: MaskConfig = toml::from_str(
        "hash_key = \"proptest-key-0123456789\"\nexempt_roles = [\"auditor\"]\n\
         [[rule]]\ncolumn = \"public.accounts.ssn\"\nstrategy = \"null\"\n",
    )
    .unwrap();
    let p = Policy::compile(&cfg).unwrap();
    let mut plan = p
        .plan(
            &Subject::new("alice", ["auditor"]),
            &columns(false),
            &Catalog::new(),
        )
        .unwrap();
    assert!(plan.is_passthrough());
    let frame = Bytes::from(data_row(&vec![Some(b"1".to_vec()); 7]));
    let out = plan
        .mask_data_row(frame.clone(), &mut MaskStats::new())
        .unwrap();
    assert_eq!(out, frame);
}
