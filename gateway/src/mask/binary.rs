//! Text inside binary values: arrays, records and composites, ranges and multiranges,
//! enums and domains, as PostgreSQL's `*_send` functions lay them out.
//!
//! A scanning rule (detectors, or the unattributed scan of computed columns) reads text.
//! In text format every value is text; in binary format only text-like types are, and a
//! structured value holds its text in leaves between length words. This module walks a
//! binary value by its type, hands each text leaf to the caller, and writes the value
//! back with the leaves the caller rewrote and every length word fixed.
//!
//! Common built-in types are known by their fixed OIDs ([`builtin`]); every other type
//! (built-in arrays and row types, user types) through the catalog ([`TypeKind`] per
//! OID, fetched with [`TypeFill`]). Array and record values name their element and field types in their
//! own bytes, so those are walked by what the bytes say. A type this module cannot read
//! as text or as certainly text-free (`tsvector`, an extension's base type) is an error:
//! the caller refuses rather than pass text it could not scan. Nothing here panics on
//! any input.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};

use super::MaskError;

/// How a type's binary values hold text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// The bytes are the text (text, varchar, name, enums, xml, citext, ...).
    Text,
    /// JSON text (`json`).
    Json,
    /// A version byte, then JSON text (`jsonb`).
    Jsonb,
    /// An array: its header names the element type.
    Array,
    /// A record or composite: each field names its type.
    Record,
    /// A range of this subtype.
    Range(u32),
    /// A multirange of this range type.
    Multirange(u32),
    /// A domain over this type.
    Domain(u32),
    /// Holds no text (numbers, dates, booleans, addresses, ...).
    NoText,
    /// May hold text in a layout this module does not read.
    Unsupported,
}

/// The kinds of types a walk may meet. `None`: not known (yet).
pub trait TypeKinds {
    fn type_kind(&self, oid: u32) -> Option<TypeKind>;
}

impl TypeKinds for HashMap<u32, TypeKind> {
    fn type_kind(&self, oid: u32) -> Option<TypeKind> {
        builtin(oid).or_else(|| self.get(&oid).copied())
    }
}

/// The kinds of common built-in types, fixed by their OIDs; `None` for every other type,
/// whose kind comes from the catalog (built-in arrays and row types, user types).
pub fn builtin(oid: u32) -> Option<TypeKind> {
    Some(match oid {
        // text, varchar, bpchar, name, "char", unknown, xml, refcursor, pg_node_tree
        25 | 1043 | 1042 | 19 | 18 | 705 | 142 | 1790 | 194 => TypeKind::Text,
        114 => TypeKind::Json,
        3802 => TypeKind::Jsonb,
        2249 => TypeKind::Record,
        // Arrays of the above, of records, of cstring.
        1009 | 1015 | 1014 | 1003 | 1002 | 199 | 3807 | 143 | 2287 | 1263 => TypeKind::Array,
        // tsvector, tsquery, jsonpath, gtsvector, planner statistics: text (or values of
        // other columns) in layouts not read here.
        3614 | 3615 | 4072 | 3642 | 3361 | 3402 | 5017 | 4600 | 4601 => TypeKind::Unsupported,
        // Numbers, booleans, dates and times, identifiers, addresses, bit strings,
        // geometry, built-in ranges and multiranges, and arrays of numbers (int2vector,
        // oidvector, int2[], int4[], int8[], oid[], float4[], float8[], numeric[]).
        16 | 17 | 20 | 21 | 23 | 26 | 700 | 701 | 1700 | 790 | 1082 | 1083 | 1114 | 1184 | 1186
        | 1266 | 2950 | 869 | 650 | 829 | 774 | 1560 | 1562 | 24 | 2202 | 2203 | 2204 | 2205
        | 2206 | 3734 | 3769 | 4089 | 4096 | 4191 | 27 | 28 | 29 | 5069 | 3220 | 600 | 601
        | 602 | 603 | 604 | 628 | 718 | 3904 | 3906 | 3908 | 3910 | 3912 | 3926 | 4451 | 4532
        | 4533 | 4534 | 4535 | 4536 | 22 | 30 | 1005 | 1007 | 1016 | 1028 | 1021 | 1022 | 1231 => {
            TypeKind::NoText
        }
        _ => return None,
    })
}

/// A text leaf as the caller sees it: its bytes, and whether they are JSON.
pub struct Leaf<'a> {
    pub text: &'a [u8],
    pub json: bool,
}

/// What the caller does with one leaf.
pub enum LeafOut {
    /// Nothing found: the leaf goes out as it came.
    Keep,
    /// The leaf's new text was appended to the output.
    Written,
}

/// What the caller does with each text leaf: append its new text and say `Written`, or
/// say `Keep`.
pub type LeafFn<'a> = dyn FnMut(Leaf<'_>, &mut BytesMut) -> Result<LeafOut, MaskError> + 'a;

/// Most levels of nesting walked (arrays of records of arrays ...); deeper values are
/// refused rather than recursed into without bound.
const MAX_DEPTH: usize = 32;

fn bad(problem: &'static str) -> MaskError {
    MaskError::malformed("binary value", problem)
}

/// Reads a big-endian `i32` at `pos`.
fn i32_at(v: &[u8], pos: usize) -> Result<i32, MaskError> {
    v.get(pos..pos + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(bad("cut short"))
}

/// Whether values of this type (with these kinds known) hold text a scan must read, and
/// every type it may contain is known. `Err`: the OIDs still to fetch.
pub fn needs(kinds: &dyn TypeKinds, oid: u32) -> Result<bool, Vec<u32>> {
    let mut missing = Vec::new();
    let mut seen = Vec::new();
    let text = reach(kinds, oid, &mut seen, &mut missing, 0);
    if missing.is_empty() {
        Ok(text)
    } else {
        missing.sort_unstable();
        missing.dedup();
        Err(missing)
    }
}

fn reach(
    kinds: &dyn TypeKinds,
    oid: u32,
    seen: &mut Vec<u32>,
    missing: &mut Vec<u32>,
    depth: usize,
) -> bool {
    if seen.contains(&oid) || depth > MAX_DEPTH {
        return false;
    }
    seen.push(oid);
    match kinds.type_kind(oid) {
        None => {
            missing.push(oid);
            true
        }
        Some(TypeKind::NoText) => false,
        Some(TypeKind::Domain(base)) => reach(kinds, base, seen, missing, depth + 1),
        Some(TypeKind::Range(sub)) => reach(kinds, sub, seen, missing, depth + 1),
        Some(TypeKind::Multirange(range)) => reach(kinds, range, seen, missing, depth + 1),
        // Element and field types are read from the values themselves.
        Some(_) => true,
    }
}

/// Walks `value`, a binary value of type `oid`, appending it to `out` with each text
/// leaf given to `leaf` first. Returns whether any leaf was rewritten (when not, `out`
/// holds a copy of `value`).
pub fn rewrite(
    kinds: &dyn TypeKinds,
    oid: u32,
    value: &[u8],
    leaf: &mut LeafFn<'_>,
    out: &mut BytesMut,
) -> Result<bool, MaskError> {
    walk(kinds, oid, value, leaf, out, 0)
}

fn walk(
    kinds: &dyn TypeKinds,
    oid: u32,
    value: &[u8],
    leaf: &mut LeafFn<'_>,
    out: &mut BytesMut,
    depth: usize,
) -> Result<bool, MaskError> {
    if depth > MAX_DEPTH {
        return Err(bad("nested too deep"));
    }
    let kind = kinds
        .type_kind(oid)
        .ok_or(MaskError::UnknownType { type_oid: oid })?;
    match kind {
        TypeKind::NoText => {
            out.put_slice(value);
            Ok(false)
        }
        TypeKind::Unsupported => Err(MaskError::UnknownType { type_oid: oid }),
        TypeKind::Text => text_leaf(value, false, leaf, out),
        TypeKind::Json => text_leaf(value, true, leaf, out),
        TypeKind::Jsonb => match value.first() {
            Some(1) => {
                out.put_u8(1);
                text_leaf(&value[1..], true, leaf, out)
            }
            _ => Err(MaskError::malformed("jsonb value", "unknown jsonb version")),
        },
        TypeKind::Domain(base) => walk(kinds, base, value, leaf, out, depth + 1),
        TypeKind::Array => array(kinds, value, leaf, out, depth),
        TypeKind::Record => record(kinds, value, leaf, out, depth),
        TypeKind::Range(sub) => range(kinds, sub, value, leaf, out, depth),
        TypeKind::Multirange(range_oid) => {
            let count = i32_at(value, 0)?;
            out.put_slice(&value[..4]);
            let mut pos = 4;
            let mut changed = false;
            for _ in 0..count.max(0) {
                let (c, next) = element(kinds, range_oid, value, pos, leaf, out, depth)?;
                changed |= c;
                pos = next;
            }
            done(value, pos, changed)
        }
    }
}

/// Hands one text leaf to the caller, copying it when the caller keeps it.
fn text_leaf(
    text: &[u8],
    json: bool,
    leaf: &mut LeafFn<'_>,
    out: &mut BytesMut,
) -> Result<bool, MaskError> {
    match leaf(Leaf { text, json }, out)? {
        LeafOut::Keep => {
            out.put_slice(text);
            Ok(false)
        }
        LeafOut::Written => Ok(true),
    }
}

/// The whole value must have been read.
fn done(value: &[u8], pos: usize, changed: bool) -> Result<bool, MaskError> {
    if pos == value.len() {
        Ok(changed)
    } else {
        Err(bad("trailing bytes"))
    }
}

/// One length-prefixed element at `pos` (-1: NULL), written with its new length.
/// Returns whether it changed and where the next one starts.
fn element(
    kinds: &dyn TypeKinds,
    oid: u32,
    value: &[u8],
    pos: usize,
    leaf: &mut LeafFn<'_>,
    out: &mut BytesMut,
    depth: usize,
) -> Result<(bool, usize), MaskError> {
    let len = i32_at(value, pos)?;
    if len == -1 {
        out.put_i32(-1);
        return Ok((false, pos + 4));
    }
    let len = usize::try_from(len).map_err(|_| bad("negative length"))?;
    let start = pos + 4;
    let body = value.get(start..start + len).ok_or(bad("cut short"))?;
    let len_at = out.len();
    out.put_i32(0);
    let changed = walk(kinds, oid, body, leaf, out, depth + 1)?;
    let written = i32::try_from(out.len() - len_at - 4).map_err(|_| bad("too large"))?;
    out[len_at..len_at + 4].copy_from_slice(&written.to_be_bytes());
    Ok((changed, start + len))
}

fn array(
    kinds: &dyn TypeKinds,
    value: &[u8],
    leaf: &mut LeafFn<'_>,
    out: &mut BytesMut,
    depth: usize,
) -> Result<bool, MaskError> {
    let ndim = i32_at(value, 0)?;
    if !(0..=6).contains(&ndim) {
        return Err(bad("array dimensions out of range"));
    }
    let elem = i32_at(value, 8)? as u32;
    let header = 12 + 8 * ndim as usize;
    let mut count: u64 = if ndim == 0 { 0 } else { 1 };
    for d in 0..ndim as usize {
        let n = i32_at(value, 12 + 8 * d)?;
        let n = u64::try_from(n).map_err(|_| bad("negative array dimension"))?;
        count = count.saturating_mul(n);
    }
    // Each element takes at least its length word: a count the bytes cannot hold is a lie.
    if count > (value.len() as u64) / 4 {
        return Err(bad("array count larger than the value"));
    }
    out.put_slice(value.get(..header).ok_or(bad("cut short"))?);
    let mut pos = header;
    let mut changed = false;
    for _ in 0..count {
        let (c, next) = element(kinds, elem, value, pos, leaf, out, depth)?;
        changed |= c;
        pos = next;
    }
    done(value, pos, changed)
}

fn record(
    kinds: &dyn TypeKinds,
    value: &[u8],
    leaf: &mut LeafFn<'_>,
    out: &mut BytesMut,
    depth: usize,
) -> Result<bool, MaskError> {
    let count = i32_at(value, 0)?;
    if count < 0 || count as usize > value.len() / 8 {
        return Err(bad("record field count larger than the value"));
    }
    out.put_slice(&value[..4]);
    let mut pos = 4;
    let mut changed = false;
    for _ in 0..count {
        let oid = i32_at(value, pos)? as u32;
        out.put_u32(oid);
        let (c, next) = element(kinds, oid, value, pos + 4, leaf, out, depth)?;
        changed |= c;
        pos = next;
    }
    done(value, pos, changed)
}

fn range(
    kinds: &dyn TypeKinds,
    sub: u32,
    value: &[u8],
    leaf: &mut LeafFn<'_>,
    out: &mut BytesMut,
    depth: usize,
) -> Result<bool, MaskError> {
    const EMPTY: u8 = 0x01;
    const LB_INF: u8 = 0x08;
    const UB_INF: u8 = 0x10;
    const LB_NULL: u8 = 0x20;
    const UB_NULL: u8 = 0x40;
    let &flags = value.first().ok_or(bad("cut short"))?;
    out.put_u8(flags);
    let mut pos = 1;
    let mut changed = false;
    // The lower bound, then the upper, each unless absent.
    for absent in [EMPTY | LB_INF | LB_NULL, EMPTY | UB_INF | UB_NULL] {
        if flags & absent == 0 {
            let (c, next) = element(kinds, sub, value, pos, leaf, out, depth)?;
            changed |= c;
            pos = next;
        }
    }
    done(value, pos, changed)
}

/// An in-progress fetch of type kinds for user types, with what they contain, from the
/// catalog (run on the gateway's own connection, like [`super::CatalogFill`]).
#[derive(Debug, Clone, Default)]
pub struct TypeFill {
    requested: Vec<u32>,
    found: HashMap<u32, TypeKind>,
}

impl TypeFill {
    pub fn new(oids: &[u32]) -> Self {
        let mut requested = oids.to_vec();
        requested.sort_unstable();
        requested.dedup();
        TypeFill {
            requested,
            found: HashMap::new(),
        }
    }

    pub fn oids(&self) -> &[u32] {
        &self.requested
    }

    /// Rows: type OID, `typtype`, `typcategory`, base type, element type, range subtype,
    /// the range of a multirange, the send function's name: for the requested types and,
    /// recursively, every type their values can contain. Built from integers only.
    pub fn sql(&self) -> String {
        let list = self
            .requested
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "WITH RECURSIVE want(oid) AS ( \
               SELECT pg_catalog.unnest('{{{list}}}'::pg_catalog.oid[]) \
               UNION \
               SELECT v.x FROM want w JOIN pg_catalog.pg_type t ON t.oid = w.oid, \
               LATERAL ( \
                 SELECT t.typbasetype UNION ALL SELECT t.typelem \
                 UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid \
                 UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r WHERE r.rngmultitypid = t.oid \
                 UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
               ) v(x) WHERE v.x <> 0 \
             ) \
             SELECT t.oid, t.typtype, t.typcategory, t.typbasetype, \
               (SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid), \
               (SELECT r.rngtypid FROM pg_catalog.pg_range r WHERE r.rngmultitypid = t.oid), \
               t.typsend::pg_catalog.text \
             FROM pg_catalog.pg_type t WHERE t.oid IN (SELECT oid FROM want)"
        )
    }

    /// One whole `DataRow` frame of the [`TypeFill::sql`] result.
    pub fn ingest_data_row(&mut self, frame: &[u8]) -> Result<(), MaskError> {
        self.ingest_row(&super::wire::data_row_fields::<7>(frame, "type row")?)
    }

    /// One row of [`TypeFill::sql`], as text fields.
    pub fn ingest_row(&mut self, fields: &[Option<&[u8]>]) -> Result<(), MaskError> {
        const WHAT: &str = "type row";
        let [
            Some(oid),
            Some(typtype),
            Some(category),
            Some(base),
            sub,
            multi,
            Some(send),
        ] = fields
        else {
            return Err(MaskError::malformed(WHAT, "expected 7 fields"));
        };
        let num = |b: &[u8]| -> Result<u32, MaskError> {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(MaskError::malformed(WHAT, "not an OID"))
        };
        let oid = num(oid)?;
        let kind = match (&typtype[..], &category[..]) {
            (b"e", _) => TypeKind::Text,
            (b"d", _) => TypeKind::Domain(num(base)?),
            (b"c", _) => TypeKind::Record,
            (b"r", _) => TypeKind::Range(num(
                sub.ok_or(MaskError::malformed(WHAT, "range without a subtype"))?
            )?),
            (b"m", _) => TypeKind::Multirange(num(
                multi.ok_or(MaskError::malformed(WHAT, "multirange without a range"))?
            )?),
            (b"b", b"A") => TypeKind::Array,
            (b"b", _) if TEXT_SEND.contains(&&send[..]) => TypeKind::Text,
            (b"b", _) if &send[..] == b"json_send" => TypeKind::Json,
            (b"b", _) if &send[..] == b"jsonb_send" => TypeKind::Jsonb,
            // Numeric, date/time, boolean, network, bit string, timespan, geometric.
            (b"b", [b'N' | b'D' | b'B' | b'I' | b'V' | b'T' | b'G']) => TypeKind::NoText,
            _ => TypeKind::Unsupported,
        };
        self.found.insert(oid, kind);
        Ok(())
    }

    /// The kinds found; requested OIDs that came back empty are not among them.
    pub fn into_found(self) -> HashMap<u32, TypeKind> {
        self.found
    }
}

/// Send functions whose binary form is the text itself (the core's and `citext`'s).
const TEXT_SEND: [&[u8]; 8] = [
    b"textsend",
    b"varcharsend",
    b"bpcharsend",
    b"namesend",
    b"charsend",
    b"citextsend",
    b"xml_send",
    b"pg_node_tree_send",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn be32(v: i32) -> [u8; 4] {
        v.to_be_bytes()
    }

    /// A one-dimensional binary array of text elements (`None`: NULL).
    fn text_array(elem: u32, items: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(be32(1));
        v.extend(be32(i32::from(items.iter().any(Option::is_none))));
        v.extend(elem.to_be_bytes());
        v.extend(be32(items.len() as i32));
        v.extend(be32(1));
        for i in items {
            match i {
                None => v.extend(be32(-1)),
                Some(b) => {
                    v.extend(be32(b.len() as i32));
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    /// Replaces every leaf containing "secret" with "X".
    fn redact(l: Leaf<'_>, out: &mut BytesMut) -> Result<LeafOut, MaskError> {
        if l.text.windows(6).any(|w| w == b"secret") {
            out.put_slice(b"X");
            Ok(LeafOut::Written)
        } else {
            Ok(LeafOut::Keep)
        }
    }

    fn run(kinds: &dyn TypeKinds, oid: u32, v: &[u8]) -> Result<(bool, Vec<u8>), MaskError> {
        let mut out = BytesMut::new();
        let changed = rewrite(kinds, oid, v, &mut redact, &mut out)?;
        Ok((changed, out.to_vec()))
    }

    #[test]
    fn array_leaves_are_rewritten_and_lengths_fixed() {
        let kinds = HashMap::new();
        let v = text_array(25, &[Some(b"a secret"), None, Some(b"plain")]);
        let (changed, out) = run(&kinds, 1009, &v).unwrap();
        assert!(changed);
        assert_eq!(out, text_array(25, &[Some(b"X"), None, Some(b"plain")]));
        let plain = text_array(25, &[Some(b"plain")]);
        assert_eq!(run(&kinds, 1009, &plain).unwrap(), (false, plain.clone()));
        // An int4[] holds no text: copied as is.
        let mut ints = text_array(23, &[Some(&be32(7))]);
        ints[0..4].copy_from_slice(&be32(1));
        assert_eq!(run(&kinds, 1007, &ints).unwrap(), (false, ints.clone()));
    }

    #[test]
    fn records_enums_domains_and_ranges_by_catalog_kind() {
        let mut kinds = HashMap::new();
        kinds.insert(20000, TypeKind::Text); // an enum
        kinds.insert(20001, TypeKind::Domain(25)); // a domain over text
        kinds.insert(20002, TypeKind::Record); // a composite
        kinds.insert(20003, TypeKind::Range(20001));
        // (20000 'secret-ish', 20001 'secret', int4 5)
        let mut rec = be32(3).to_vec();
        for (oid, bytes) in [
            (20000u32, &b"red"[..]),
            (20001, b"my secret"),
            (23, &be32(5)[..]),
        ] {
            rec.extend(oid.to_be_bytes());
            rec.extend(be32(bytes.len() as i32));
            rec.extend_from_slice(bytes);
        }
        let (changed, out) = run(&kinds, 20002, &rec).unwrap();
        assert!(changed);
        assert!(out.windows(1).any(|w| w == b"X") && !out.windows(6).any(|w| w == b"secret"));
        // a range [a secret, z) of the domain
        let mut r = vec![0x02u8];
        for b in [&b"a secret"[..], b"z"] {
            r.extend(be32(b.len() as i32));
            r.extend_from_slice(b);
        }
        let (changed, out) = run(&kinds, 20003, &r).unwrap();
        assert!(changed);
        assert_eq!(out, [&[0x02][..], &be32(1), b"X", &be32(1), b"z"].concat());
        // an empty range has no bounds
        assert_eq!(run(&kinds, 20003, &[0x01]).unwrap(), (false, vec![0x01]));
    }

    #[test]
    fn unknown_and_unreadable_types_are_errors_not_passes() {
        let kinds = HashMap::new();
        assert!(matches!(
            run(&kinds, 30000, b"x"),
            Err(MaskError::UnknownType { type_oid: 30000 })
        ));
        // a record with a field of a type nobody fetched
        let mut rec = be32(1).to_vec();
        rec.extend(30000u32.to_be_bytes());
        rec.extend(be32(1));
        rec.push(b'x');
        assert!(run(&kinds, 2249, &rec).is_err());
        assert!(matches!(
            run(&kinds, 3614, b"x"),
            Err(MaskError::UnknownType { type_oid: 3614 })
        ));
        assert_eq!(needs(&kinds, 30000), Err(vec![30000]));
        assert_eq!(
            needs(&kinds, 71),
            Err(vec![71]),
            "a row type comes from the catalog"
        );
        assert_eq!(needs(&kinds, 1009), Ok(true));
        assert_eq!(needs(&kinds, 23), Ok(false));
    }

    #[test]
    fn malformed_values_never_panic() {
        let mut kinds = HashMap::new();
        kinds.insert(20003, TypeKind::Range(25));
        kinds.insert(20004, TypeKind::Multirange(20003));
        let good = text_array(25, &[Some(b"a secret"), None, Some(b"b")]);
        for cut in 0..good.len() {
            assert!(run(&kinds, 1009, &good[..cut]).is_err(), "cut at {cut}");
        }
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 40))
                .map(|i| (seed.wrapping_mul(2654435761).rotate_left(i) & 0xff) as u8)
                .collect();
            for oid in [1009, 2249, 20003, 20004, 3802] {
                let _ = run(&kinds, oid, &bytes);
            }
        }
        // a huge claimed count is refused before any work
        let mut lie = text_array(25, &[]);
        lie[12..16].copy_from_slice(&be32(i32::MAX));
        assert!(run(&kinds, 1009, &lie).is_err());
    }

    #[test]
    fn type_rows_become_kinds() {
        let mut fill = TypeFill::new(&[20005, 20000]);
        assert!(fill.sql().contains("'{20000,20005}'::pg_catalog.oid[]"));
        for row in [
            [&b"20000"[..], b"e", b"E", b"0", b"textsend"],
            [b"20005", b"b", b"U", b"0", b"citextsend"],
            [b"20006", b"b", b"U", b"0", b"hstore_send"],
            [b"20007", b"b", b"N", b"0", b"my_numeric_send"],
        ] {
            fill.ingest_row(&[
                Some(row[0]),
                Some(row[1]),
                Some(row[2]),
                Some(row[3]),
                None,
                None,
                Some(row[4]),
            ])
            .unwrap();
        }
        let found = fill.into_found();
        assert_eq!(found[&20000], TypeKind::Text);
        assert_eq!(found[&20005], TypeKind::Text);
        assert_eq!(found[&20006], TypeKind::Unsupported);
        assert_eq!(found[&20007], TypeKind::NoText);
    }
}
