//! Reading the backend messages masking needs: `RowDescription` into [`ColumnDesc`]s and
//! the field layout of a `DataRow`.
//!
//! Every read is bounds-checked; malformed input is a [`MaskError::Malformed`], never a
//! panic. Frames are whole messages including the tag byte and the length.

use super::MaskError;

/// One column of a result set, as a `RowDescription` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDesc {
    /// The column label (an alias if the query gave one), raw bytes.
    pub name: Vec<u8>,
    /// Source table OID, or 0 for a computed column.
    pub table_oid: u32,
    /// Source attribute number, or 0.
    pub attnum: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

impl ColumnDesc {
    /// A text-format column with no source table (handy in tests and for synthetic
    /// results).
    pub fn computed(name: &str, type_oid: u32) -> Self {
        ColumnDesc {
            name: name.as_bytes().to_vec(),
            table_oid: 0,
            attnum: 0,
            type_oid,
            type_len: -1,
            type_mod: -1,
            format: 0,
        }
    }

    pub fn is_binary(&self) -> bool {
        self.format == 1
    }

    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Bounds-checked big-endian reader.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn short(&self) -> MaskError {
        MaskError::malformed(self.what, "truncated")
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], MaskError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, MaskError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, MaskError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn cstr(&mut self) -> Result<&'a [u8], MaskError> {
        let end = memchr::memchr(0, self.buf)
            .ok_or_else(|| MaskError::malformed(self.what, "unterminated string"))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Checks the tag and the length word of a whole message and returns its body.
pub(crate) fn message_body<'a>(
    frame: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<&'a [u8], MaskError> {
    if frame.len() < 5 {
        return Err(MaskError::malformed(what, "shorter than a message header"));
    }
    if frame[0] != tag {
        return Err(MaskError::malformed(what, "wrong message tag"));
    }
    let len = i32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
    if len < 4 || len as usize != frame.len() - 1 {
        return Err(MaskError::malformed(
            what,
            "length word does not match the frame",
        ));
    }
    Ok(&frame[5..])
}

/// Parses a whole `RowDescription` ('T') frame.
pub fn parse_row_description(frame: &[u8]) -> Result<Vec<ColumnDesc>, MaskError> {
    const WHAT: &str = "RowDescription";
    let body = message_body(frame, b'T', WHAT)?;
    let mut r = Reader::new(body, WHAT);
    let n = r.i16()?;
    if n < 0 {
        return Err(MaskError::malformed(WHAT, "negative column count"));
    }
    // Each field takes at least 19 bytes, so the capacity cannot be inflated by a lie.
    let mut cols = Vec::with_capacity((n as usize).min(body.len() / 19));
    for _ in 0..n {
        let name = r.cstr()?.to_vec();
        let table_oid = r.i32()? as u32;
        let attnum = r.i16()?;
        let type_oid = r.i32()? as u32;
        let type_len = r.i16()?;
        let type_mod = r.i32()?;
        let format = r.i16()?;
        if format != 0 && format != 1 {
            return Err(MaskError::malformed(WHAT, "unknown format code"));
        }
        cols.push(ColumnDesc {
            name,
            table_oid,
            attnum,
            type_oid,
            type_len,
            type_mod,
            format,
        });
    }
    if !r.is_empty() {
        return Err(MaskError::malformed(WHAT, "trailing bytes"));
    }
    Ok(cols)
}

/// Applies `Bind`'s result-format codes to columns from a statement `Describe`, whose
/// `RowDescription` always says text: no codes means all text, one code applies to all,
/// otherwise one code per column. Plan with the patched columns, or binary values would
/// be treated as text.
pub fn apply_result_formats(columns: &mut [ColumnDesc], formats: &[i16]) -> Result<(), MaskError> {
    const WHAT: &str = "Bind result formats";
    match formats.len() {
        0 => columns.iter_mut().for_each(|c| c.format = 0),
        1 => columns.iter_mut().for_each(|c| c.format = formats[0]),
        n if n == columns.len() => columns
            .iter_mut()
            .zip(formats)
            .for_each(|(c, &f)| c.format = f),
        _ => {
            return Err(MaskError::malformed(
                WHAT,
                "count matches neither 0, 1 nor the columns",
            ));
        }
    }
    if columns.iter().any(|c| c.format != 0 && c.format != 1) {
        return Err(MaskError::malformed(WHAT, "unknown format code"));
    }
    Ok(())
}

/// Validates a `DataRow` header against the expected column count and returns the
/// offset of the first field.
pub(crate) fn data_row_start(frame: &[u8], expected: usize) -> Result<usize, MaskError> {
    const WHAT: &str = "DataRow";
    let body = message_body(frame, b'D', WHAT)?;
    if body.len() < 2 {
        return Err(MaskError::malformed(WHAT, "missing column count"));
    }
    let n = i16::from_be_bytes([body[0], body[1]]);
    if n < 0 || n as usize != expected {
        return Err(MaskError::ColumnCount {
            what: WHAT,
            got: n.max(0) as usize,
            expected,
        });
    }
    Ok(7)
}

/// Reads one field at `pos`: `(value range or None for NULL, position after the field)`.
#[inline]
/// The `N` fields of a whole `DataRow` frame that must have exactly `N` columns and
/// nothing after them (`None`: NULL).
pub(crate) fn data_row_fields<'a, const N: usize>(
    frame: &'a [u8],
    what: &'static str,
) -> Result<[Option<&'a [u8]>; N], MaskError> {
    let mut pos = data_row_start(frame, N)?;
    let mut fields = [None; N];
    for f in &mut fields {
        let (range, next) = read_field(frame, pos, what)?;
        *f = range.map(|(s, e)| &frame[s..e]);
        pos = next;
    }
    if pos != frame.len() {
        return Err(MaskError::malformed(what, "trailing bytes"));
    }
    Ok(fields)
}

pub(crate) fn read_field(
    buf: &[u8],
    pos: usize,
    what: &'static str,
) -> Result<(Option<(usize, usize)>, usize), MaskError> {
    let Some(len_bytes) = buf.get(pos..pos + 4) else {
        return Err(MaskError::malformed(what, "truncated field length"));
    };
    let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    let start = pos + 4;
    if len == -1 {
        return Ok((None, start));
    }
    if len < 0 {
        return Err(MaskError::malformed(what, "negative field length"));
    }
    let end = start
        .checked_add(len as usize)
        .filter(|&e| e <= buf.len())
        .ok_or_else(|| MaskError::malformed(what, "field runs past the end"))?;
    Ok((Some((start, end)), end))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a `RowDescription` frame (test helper shared with other modules' tests).
    pub(crate) fn row_description(cols: &[ColumnDesc]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for c in cols {
            body.extend_from_slice(&c.name);
            body.push(0);
            body.extend_from_slice(&c.table_oid.to_be_bytes());
            body.extend_from_slice(&c.attnum.to_be_bytes());
            body.extend_from_slice(&c.type_oid.to_be_bytes());
            body.extend_from_slice(&c.type_len.to_be_bytes());
            body.extend_from_slice(&c.type_mod.to_be_bytes());
            body.extend_from_slice(&c.format.to_be_bytes());
        }
        let mut f = vec![b'T'];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn row_description_roundtrip() {
        let cols = vec![
            ColumnDesc {
                name: b"ssn".to_vec(),
                table_oid: 16384,
                attnum: 3,
                type_oid: 25,
                type_len: -1,
                type_mod: -1,
                format: 0,
            },
            ColumnDesc::computed("n", 23),
        ];
        let frame = row_description(&cols);
        assert_eq!(parse_row_description(&frame).unwrap(), cols);
    }

    #[test]
    fn row_description_rejects_garbage_without_panicking() {
        let frame = row_description(&[ColumnDesc::computed("abc", 25)]);
        for cut in 0..frame.len() {
            assert!(parse_row_description(&frame[..cut]).is_err());
        }
        let mut lying = frame.clone();
        lying[5] = 0x7f; // claims 32k columns
        assert!(parse_row_description(&lying).is_err());
        let mut extra = frame.clone();
        extra.push(0);
        assert!(parse_row_description(&extra).is_err());
    }

    #[test]
    fn result_formats() {
        let mut cols = vec![ColumnDesc::computed("a", 25), ColumnDesc::computed("b", 23)];
        apply_result_formats(&mut cols, &[1]).unwrap();
        assert!(cols.iter().all(ColumnDesc::is_binary));
        apply_result_formats(&mut cols, &[0, 1]).unwrap();
        assert!(!cols[0].is_binary() && cols[1].is_binary());
        assert!(apply_result_formats(&mut cols, &[0, 1, 0]).is_err());
        assert!(apply_result_formats(&mut cols, &[2]).is_err());
    }
}
