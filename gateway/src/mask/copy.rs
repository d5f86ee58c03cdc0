//! Masking `COPY ... TO STDOUT` streams: text, CSV and binary formats.
//!
//! `CopyData` messages may cut rows anywhere (PostgreSQL sends one row per message, but
//! nothing promises it and poolers re-chunk). A [`CopyPlan`] keeps the unfinished tail of
//! the stream in a carry buffer bounded by [`CopyPlan::with_max_carry`] (a bigger row is
//! an error, never a pass), masks each complete row with the same per-column decisions as
//! `DataRow`s, and emits one `CopyData` per input message holding the complete rows it
//! closed. A message made only of complete, unchanged rows is returned as the very same
//! `Bytes`.
//!
//! The layout comes from the statement's options ([`CopyFormat`]: delimiter, NULL string,
//! header line, quote, escape, forced quoting). Text format: fields split on the
//! delimiter, the null string (`\N` by default) is NULL, and backslash escapes (an escaped
//! delimiter among them) are decoded before masking and re-applied after. CSV: quoted
//! fields may hold delimiters, quotes (doubled, or after the escape character) and raw
//! newlines; an unquoted null string is NULL. A header line passes through unmasked once
//! it is checked to name the copied columns. Binary: the `PGCOPY` header passes through,
//! tuples are length-prefixed fields, the `-1` trailer ends the data.

use bytes::{BufMut, Bytes, BytesMut};

use super::MaskError;
use super::policy::{MaskStats, Outcome, RowPlan, Scratch};
use super::wire::{Reader, message_body};

/// How text-format `COPY` data is written, from the statement's options.
///
/// `header` holds the names of the copied columns when the statement asked for a header
/// line (`HEADER`): the first row must name them, and passes through unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    Text {
        delimiter: u8,
        null: Vec<u8>,
        header: Option<Vec<Vec<u8>>>,
    },
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
        header: Option<Vec<Vec<u8>>>,
        /// `FORCE_QUOTE`, per column in copy order (empty: none). Masked values of these
        /// columns are quoted as the server quotes the rest.
        force_quote: Vec<bool>,
    },
}

impl CopyFormat {
    /// `FORMAT text` defaults: tab, `\N`, no header.
    pub fn text() -> Self {
        CopyFormat::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
            header: None,
        }
    }

    /// `FORMAT csv` defaults: comma, `"` for quote and escape, empty string for NULL, no
    /// header, no forced quoting.
    pub fn csv() -> Self {
        CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
            header: None,
            force_quote: Vec::new(),
        }
    }

    fn header(&self) -> Option<&[Vec<u8>]> {
        match self {
            CopyFormat::Text { header, .. } | CopyFormat::Csv { header, .. } => header.as_deref(),
        }
    }
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Default carry limit: one row may be this large before the stream is refused.
pub const DEFAULT_MAX_CARRY: usize = 64 << 20;

/// Parses a whole `CopyOutResponse` ('H'): `(binary, column count)`.
pub(crate) fn parse_copy_out_response(frame: &[u8]) -> Result<(bool, usize), MaskError> {
    const WHAT: &str = "CopyOutResponse";
    let mut r = Reader::new(message_body(frame, b'H', WHAT)?, WHAT);
    let overall = r.bytes(1)?[0];
    let n = r.i16()?;
    if overall > 1 || n < 0 {
        return Err(MaskError::malformed(WHAT, "bad format or column count"));
    }
    for _ in 0..n {
        if r.i16()? != i16::from(overall) {
            return Err(MaskError::malformed(
                WHAT,
                "column format differs from the overall format",
            ));
        }
    }
    if !r.is_empty() {
        return Err(MaskError::malformed(WHAT, "trailing bytes"));
    }
    Ok((overall == 1, n as usize))
}

/// Where the row-end search stopped inside the carried tail, so a long row split into
/// many messages is scanned once, not once per message.
#[derive(Debug, Clone, Copy, Default)]
struct Resume {
    offset: usize,
    in_quote: bool,
}

/// The masking state of one `COPY TO STDOUT`.
#[derive(Debug)]
pub struct CopyPlan {
    plan: RowPlan,
    binary: bool,
    format: CopyFormat,
    carry: BytesMut,
    resume: Resume,
    max_carry: usize,
    /// The stream's header (the binary signature, or the text/CSV header line) is behind.
    header_done: bool,
    trailer_seen: bool,
    scratch: Scratch,
    decoded: Vec<u8>,
}

impl CopyPlan {
    pub(crate) fn new(plan: RowPlan, binary: bool, format: CopyFormat) -> Self {
        let header_done = !binary && format.header().is_none();
        CopyPlan {
            plan,
            binary,
            format,
            carry: BytesMut::new(),
            resume: Resume::default(),
            max_carry: DEFAULT_MAX_CARRY,
            header_done,
            trailer_seen: false,
            scratch: Scratch::default(),
            decoded: Vec::new(),
        }
    }

    /// Largest unfinished row kept between messages (default 64 MiB).
    pub fn with_max_carry(mut self, bytes: usize) -> Self {
        self.max_carry = bytes;
        self
    }

    /// Nothing to mask: forward `CopyData` as is.
    pub fn is_passthrough(&self) -> bool {
        self.plan.is_passthrough()
    }

    /// Bytes held back waiting for the rest of a row.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    /// Masks one whole `CopyData` ('d') frame. Returns zero or one `CopyData` frame to
    /// forward (empty `Bytes` when the message only carried part of a row).
    pub fn mask_copy_data(
        &mut self,
        frame: Bytes,
        stats: &mut MaskStats,
    ) -> Result<Bytes, MaskError> {
        let mut out = BytesMut::new();
        Ok(if self.mask_copy_into(&frame, &mut out, stats)? {
            out.freeze()
        } else {
            frame
        })
    }

    /// Masks one whole `CopyData` frame into `out`: `false` (and `out` untouched) when
    /// it is to be forwarded as it is, `true` when what replaces it was appended (zero or
    /// one `CopyData` frame: nothing when the message only carried part of a row). On
    /// error `out` is as it was.
    pub fn mask_copy_into(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        stats: &mut MaskStats,
    ) -> Result<bool, MaskError> {
        if self.plan.is_passthrough() {
            return Ok(false);
        }
        let payload = message_body(frame, b'd', "CopyData")?;
        let start = out.len();
        out.reserve(payload.len() + self.carry.len() + 64);
        out.put_u8(b'd');
        out.put_i32(0);
        let r = self.copy_rows(payload, out, stats);
        match r {
            Ok(true) if out.len() == start + 5 => {
                out.truncate(start);
                Ok(true)
            }
            Ok(true) => match i32::try_from(out.len() - start - 1) {
                Ok(len) => {
                    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
                    Ok(true)
                }
                Err(_) => {
                    out.truncate(start);
                    Err(MaskError::malformed("CopyData", "output too large"))
                }
            },
            other => {
                out.truncate(start);
                other
            }
        }
    }

    /// The rows of `payload` (after what was carried) into `out`; `false` when the
    /// frame can go as it is.
    fn copy_rows(
        &mut self,
        payload: &[u8],
        out: &mut BytesMut,
        stats: &mut MaskStats,
    ) -> Result<bool, MaskError> {
        let from_carry = !self.carry.is_empty();
        let (consumed, changed) = if from_carry {
            self.carry.extend_from_slice(payload);
            let data = std::mem::take(&mut self.carry);
            let r = self.process(&data, out, stats);
            self.carry = data;
            r?
        } else {
            self.process(payload, out, stats)?
        };
        if from_carry {
            let _ = self.carry.split_to(consumed);
        } else {
            if !changed && consumed == payload.len() {
                return Ok(false);
            }
            self.carry.extend_from_slice(&payload[consumed..]);
        }
        if self.carry.len() > self.max_carry {
            return Err(MaskError::CopyRowTooLarge {
                limit: self.max_carry,
            });
        }
        Ok(true)
    }

    /// Call on `CopyDone`: an unfinished row left over means truncated data.
    pub fn finish(&mut self) -> Result<(), MaskError> {
        if !self.carry.is_empty() {
            return Err(MaskError::malformed(
                "COPY data",
                "stream ended inside a row",
            ));
        }
        if self.binary && self.header_done && !self.trailer_seen {
            return Err(MaskError::malformed("binary COPY data", "missing trailer"));
        }
        Ok(())
    }

    /// Masks the complete rows at the start of `data` into `out`. Returns how many bytes
    /// were consumed and whether any output differs from the input.
    fn process(
        &mut self,
        data: &[u8],
        out: &mut BytesMut,
        stats: &mut MaskStats,
    ) -> Result<(usize, bool), MaskError> {
        let mut pos = 0;
        let mut changed = false;
        let resume = std::mem::take(&mut self.resume);
        let mut first = true;
        while pos < data.len() {
            let rest = &data[pos..];
            let start_state = if first { resume } else { Resume::default() };
            first = false;
            let end = if self.binary {
                self.binary_row_end(rest)?
            } else {
                match self.text_row_end(rest, start_state) {
                    Ok(e) => Some(e),
                    Err(state) => {
                        self.resume = state;
                        None
                    }
                }
            };
            let Some(end) = end else { break };
            let row = &rest[..end];
            let before = out.len();
            let row_changed = if self.binary {
                self.mask_binary_row(row, out, stats)?
            } else {
                self.mask_text_row(row, out, stats)?
            };
            if !row_changed {
                out.truncate(before);
                out.extend_from_slice(row);
            }
            changed |= row_changed;
            pos += end;
        }
        Ok((pos, changed))
    }

    /// Length of the first complete text/CSV row (through its newline), or the state to
    /// resume from when the row is not complete yet.
    fn text_row_end(&self, data: &[u8], state: Resume) -> Result<usize, Resume> {
        match &self.format {
            CopyFormat::Text { .. } => {
                match memchr::memchr(b'\n', &data[state.offset.min(data.len())..]) {
                    // In text format a raw newline always ends the row: newlines in values
                    // are written as `\n`.
                    Some(i) => Ok(state.offset + i + 1),
                    None => Err(Resume {
                        offset: data.len(),
                        in_quote: false,
                    }),
                }
            }
            CopyFormat::Csv { quote, escape, .. } => {
                let (quote, escape) = (*quote, *escape);
                let mut i = state.offset;
                let mut in_quote = state.in_quote;
                while i < data.len() {
                    let b = data[i];
                    if in_quote {
                        if b == escape && escape != quote {
                            if i + 1 >= data.len() {
                                // Decide once the escaped byte arrives.
                                return Err(Resume {
                                    offset: i,
                                    in_quote,
                                });
                            }
                            i += 2;
                            continue;
                        }
                        if b == quote {
                            in_quote = false;
                        }
                    } else if b == quote {
                        in_quote = true;
                    } else if b == b'\n' {
                        return Ok(i + 1);
                    }
                    i += 1;
                }
                Err(Resume {
                    offset: i,
                    in_quote,
                })
            }
        }
    }

    fn mask_text_row(
        &mut self,
        row: &[u8],
        out: &mut BytesMut,
        stats: &mut MaskStats,
    ) -> Result<bool, MaskError> {
        let line = &row[..row.len() - 1];
        if !self.header_done {
            self.check_header(line)?;
            self.header_done = true;
            return Ok(false);
        }
        let ncols = self.plan.column_count();
        let mut changed = false;
        let mut col = 0;
        let mut start = 0;
        stats.rows += 1;
        loop {
            let (end, next) = self.field_end(line, start);
            if col >= ncols {
                return Err(MaskError::ColumnCount {
                    what: "COPY row",
                    got: col + 1,
                    expected: ncols,
                });
            }
            if col > 0 {
                out.put_u8(self.delimiter());
            }
            changed |= self.mask_text_field(col, &line[start..end], out, stats)?;
            col += 1;
            match next {
                Some(n) => start = n,
                None => break,
            }
        }
        if col != ncols {
            return Err(MaskError::ColumnCount {
                what: "COPY row",
                got: col,
                expected: ncols,
            });
        }
        out.put_u8(b'\n');
        Ok(changed)
    }

    /// The header line must name the copied columns in order. Checking, rather than
    /// skipping the first row blindly, means a misread `HEADER` can only refuse the
    /// stream, never let a data row through unmasked.
    fn check_header(&mut self, line: &[u8]) -> Result<(), MaskError> {
        let mismatch = MaskError::malformed("COPY header", "does not name the copied columns");
        let expected = self.format.header().ok_or(mismatch.clone())?;
        let mut names = expected.iter();
        let mut start = 0;
        loop {
            let (end, next) = self.field_end(line, start);
            self.decoded.clear();
            match &self.format {
                CopyFormat::Text { .. } => text_decode(&line[start..end], &mut self.decoded),
                CopyFormat::Csv { quote, escape, .. } => {
                    csv_decode(&line[start..end], *quote, *escape, &mut self.decoded)
                }
            }
            if names.next() != Some(&self.decoded) {
                return Err(mismatch);
            }
            match next {
                Some(n) => start = n,
                None => break,
            }
        }
        match names.next() {
            None => Ok(()),
            Some(_) => Err(mismatch),
        }
    }

    fn delimiter(&self) -> u8 {
        match &self.format {
            CopyFormat::Text { delimiter, .. } | CopyFormat::Csv { delimiter, .. } => *delimiter,
        }
    }

    /// End of the field starting at `start`, and where the next one starts (None at the
    /// end of the line).
    fn field_end(&self, line: &[u8], start: usize) -> (usize, Option<usize>) {
        let mut i = start;
        match &self.format {
            CopyFormat::Text { delimiter, .. } => {
                while i < line.len() {
                    if line[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if line[i] == *delimiter {
                        return (i, Some(i + 1));
                    }
                    i += 1;
                }
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                ..
            } => {
                let mut in_quote = false;
                while i < line.len() {
                    let b = line[i];
                    if in_quote {
                        if b == *escape && escape != quote {
                            i += 2;
                            continue;
                        }
                        if b == *quote {
                            in_quote = false;
                        }
                    } else if b == *quote {
                        in_quote = true;
                    } else if b == *delimiter {
                        return (i, Some(i + 1));
                    }
                    i += 1;
                }
            }
        }
        (line.len().min(i), None)
    }

    /// Writes one field (masked or not) to `out`; true if it changed.
    fn mask_text_field(
        &mut self,
        col: usize,
        raw: &[u8],
        out: &mut BytesMut,
        stats: &mut MaskStats,
    ) -> Result<bool, MaskError> {
        if self.plan.rule_for(col).is_none() {
            out.extend_from_slice(raw);
            return Ok(false);
        }
        let null = match &self.format {
            CopyFormat::Text { null, .. } | CopyFormat::Csv { null, .. } => null,
        };
        if raw == null.as_slice() {
            out.extend_from_slice(raw);
            return Ok(false);
        }
        self.decoded.clear();
        match &self.format {
            CopyFormat::Text { .. } => text_decode(raw, &mut self.decoded),
            CopyFormat::Csv { quote, escape, .. } => {
                csv_decode(raw, *quote, *escape, &mut self.decoded)
            }
        }
        let outcome = self
            .plan
            .mask_value(col, &self.decoded, &mut self.scratch, stats)?;
        match outcome {
            Outcome::Keep => {
                out.extend_from_slice(raw);
                return Ok(false);
            }
            Outcome::Null => out.extend_from_slice(null),
            Outcome::Replaced => match &self.format {
                CopyFormat::Text { delimiter, .. } => {
                    text_encode(&self.scratch.out, *delimiter, out)
                }
                CopyFormat::Csv {
                    delimiter,
                    quote,
                    escape,
                    null,
                    force_quote,
                    ..
                } => {
                    let value = &self.scratch.out[..];
                    let quoted = force_quote.get(col).copied().unwrap_or(false)
                        || csv_needs_quotes(
                            value,
                            *delimiter,
                            *quote,
                            null,
                            self.plan.column_count() == 1,
                        );
                    csv_encode(value, *quote, *escape, quoted, out)
                }
            },
        }
        Ok(true)
    }

    /// Length of the first complete binary unit (header, tuple or trailer), if complete.
    fn binary_row_end(&mut self, data: &[u8]) -> Result<Option<usize>, MaskError> {
        const WHAT: &str = "binary COPY data";
        if !self.header_done {
            if data.len() < 19 {
                return Ok(None);
            }
            if &data[..11] != SIGNATURE {
                return Err(MaskError::malformed(WHAT, "bad PGCOPY signature"));
            }
            let flags = i32::from_be_bytes([data[11], data[12], data[13], data[14]]);
            if flags & (1 << 16) != 0 {
                return Err(MaskError::malformed(
                    WHAT,
                    "tuples with OIDs are not supported",
                ));
            }
            let ext = i32::from_be_bytes([data[15], data[16], data[17], data[18]]);
            let ext = usize::try_from(ext)
                .map_err(|_| MaskError::malformed(WHAT, "negative header extension"))?;
            return Ok(data
                .len()
                .checked_sub(19)
                .filter(|&r| r >= ext)
                .map(|_| 19 + ext));
        }
        if self.trailer_seen {
            return Err(MaskError::malformed(WHAT, "data after the trailer"));
        }
        if data.len() < 2 {
            return Ok(None);
        }
        let n = i16::from_be_bytes([data[0], data[1]]);
        if n == -1 {
            return Ok(Some(2));
        }
        if n < 0 || n as usize != self.plan.column_count() {
            return Err(MaskError::ColumnCount {
                what: "binary COPY tuple",
                got: n.max(0) as usize,
                expected: self.plan.column_count(),
            });
        }
        let mut pos = 2;
        for _ in 0..n {
            let Some(len) = data.get(pos..pos + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            pos += 4;
            if len == -1 {
                continue;
            }
            let len = usize::try_from(len)
                .map_err(|_| MaskError::malformed(WHAT, "negative field length"))?;
            pos = pos.saturating_add(len);
            if pos > data.len() {
                return Ok(None);
            }
        }
        Ok(Some(pos))
    }

    fn mask_binary_row(
        &mut self,
        row: &[u8],
        out: &mut BytesMut,
        stats: &mut MaskStats,
    ) -> Result<bool, MaskError> {
        if !self.header_done {
            self.header_done = true;
            return Ok(false);
        }
        if row.len() == 2 && row == b"\xff\xff" {
            self.trailer_seen = true;
            return Ok(false);
        }
        stats.rows += 1;
        out.extend_from_slice(&row[..2]);
        let mut pos = 2;
        let mut changed = false;
        for col in 0..self.plan.column_count() {
            let (range, next) = super::wire::read_field(row, pos, "binary COPY tuple")?;
            let field_at = pos;
            pos = next;
            let Some((s, e)) = range else {
                out.put_i32(-1);
                continue;
            };
            match self
                .plan
                .mask_value(col, &row[s..e], &mut self.scratch, stats)?
            {
                Outcome::Keep => out.extend_from_slice(&row[field_at..e]),
                Outcome::Null => {
                    out.put_i32(-1);
                    changed = true;
                }
                Outcome::Replaced => {
                    let len = i32::try_from(self.scratch.out.len()).map_err(|_| {
                        MaskError::malformed("binary COPY tuple", "masked value too large")
                    })?;
                    out.put_i32(len);
                    out.extend_from_slice(&self.scratch.out);
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}

fn text_decode(raw: &[u8], out: &mut Vec<u8>) {
    if memchr::memchr(b'\\', raw).is_none() {
        out.extend_from_slice(raw);
        return;
    }
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 >= raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut k = 0;
                while k < 2 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                    v = v * 8 + u32::from(raw[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if i < raw.len() && raw[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && i < raw.len() && raw[i].is_ascii_hexdigit() {
                    v = v * 16 + (raw[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
}

/// Escapes a value as the server's text format does, so a masked field reads back the
/// same way as its neighbours (control characters by name, backslash and the delimiter
/// behind a backslash).
fn text_encode(value: &[u8], delimiter: u8, out: &mut BytesMut) {
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            8 => out.extend_from_slice(b"\\b"),
            12 => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            11 => out.extend_from_slice(b"\\v"),
            b if b == delimiter => {
                out.put_u8(b'\\');
                out.put_u8(b);
            }
            b => out.put_u8(b),
        }
    }
}

fn csv_decode(raw: &[u8], quote: u8, escape: u8, out: &mut Vec<u8>) {
    let mut in_quote = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if in_quote {
            if b == escape
                && i + 1 < raw.len()
                && (raw[i + 1] == quote || raw[i + 1] == escape)
                && (escape != quote || raw[i + 1] == quote)
            {
                out.push(raw[i + 1]);
                i += 2;
                continue;
            }
            if b == quote {
                in_quote = false;
            } else {
                out.push(b);
            }
        } else if b == quote {
            in_quote = true;
        } else {
            out.push(b);
        }
        i += 1;
    }
}

/// When the server quotes a CSV value: it equals the null string (so it is not read as
/// NULL), holds the delimiter, the quote or a line break, or is `\.` alone on a line
/// (the end-of-data marker).
fn csv_needs_quotes(value: &[u8], delimiter: u8, quote: u8, null: &[u8], single: bool) -> bool {
    value == null
        || (single && value == b"\\.")
        || value
            .iter()
            .any(|&b| b == delimiter || b == quote || b == b'\n' || b == b'\r')
}

fn csv_encode(value: &[u8], quote: u8, escape: u8, quoted: bool, out: &mut BytesMut) {
    if !quoted {
        out.extend_from_slice(value);
        return;
    }
    out.put_u8(quote);
    for &b in value {
        if b == quote || b == escape {
            out.put_u8(escape);
        }
        out.put_u8(b);
    }
    out.put_u8(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::policy::tests::policy;
    use crate::mask::{Catalog, ColumnDesc, Policy, Subject};
    use crate::protocol::backend::{copy_data, copy_out_response};

    fn payloads(frames: &[Bytes]) -> Vec<u8> {
        let mut all = Vec::new();
        for f in frames.iter().filter(|f| !f.is_empty()) {
            assert_eq!(f[0], b'd');
            let len = i32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
            assert_eq!(len, f.len() - 1);
            all.extend_from_slice(&f[5..]);
        }
        all
    }

    const RULES: &str = "[[rule]]\nname = \"ssn\"\ncolumn_name = \"ssn\"\nstrategy = \"partial\"\nkeep_last = 4\n\
                         [[rule]]\nname = \"notes\"\ncolumn_name = \"notes\"\ndetectors = [\"email\"]\nstrategy = \"redact\"\ntext = \"[E]\"\n";

    fn cols() -> Vec<ColumnDesc> {
        vec![
            ColumnDesc::computed("id", 23),
            ColumnDesc::computed("ssn", 25),
            ColumnDesc::computed("notes", 25),
        ]
    }

    fn run(
        format: CopyFormat,
        binary: bool,
        input: &[u8],
        chunk: usize,
    ) -> Result<Vec<u8>, MaskError> {
        run_rules(RULES, format, binary, input, chunk)
    }

    fn run_rules(
        rules: &str,
        format: CopyFormat,
        binary: bool,
        input: &[u8],
        chunk: usize,
    ) -> Result<Vec<u8>, MaskError> {
        let p = policy(rules);
        let mut plan = p.plan_copy(
            &Subject::new("a", ["r"]),
            Some(&cols()),
            &Catalog::new(),
            &copy_out_response(binary, 3),
            format,
        )?;
        let mut stats = MaskStats::new();
        let mut outs = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            outs.push(plan.mask_copy_data(copy_data(c), &mut stats)?);
        }
        plan.finish()?;
        Ok(payloads(&outs))
    }

    #[test]
    fn text_format_any_split() {
        let input = b"1\t123-45-6789\tmail a@b.io\\tnow\n2\t\\N\tclean\n3\t987\\\\65-4321\ttab\\there x@y.org\n";
        let want =
            b"1\t***-**-6789\tmail [E]\\tnow\n2\t\\N\tclean\n3\t***\\\\**-4321\ttab\\there [E]\n";
        for chunk in 1..input.len() + 1 {
            assert_eq!(
                run(CopyFormat::text(), false, input, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn csv_format_any_split() {
        let input = b"1,123-45-6789,\"multi\nline, a@b.io \"\"q\"\"\"\n2,,\"\"\n";
        let want = b"1,***-**-6789,\"multi\nline, [E] \"\"q\"\"\"\n2,,\"\"\n";
        for chunk in 1..input.len() + 1 {
            assert_eq!(
                run(CopyFormat::csv(), false, input, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
    }

    /// Same output whatever the `CopyData` boundaries.
    fn every_split(rules: &str, format: &CopyFormat, input: &[u8]) -> Result<Vec<u8>, MaskError> {
        let whole = run_rules(rules, format.clone(), false, input, input.len());
        for chunk in 1..input.len() {
            assert_eq!(
                run_rules(rules, format.clone(), false, input, chunk),
                whole,
                "chunk {chunk}"
            );
        }
        whole
    }

    fn header() -> Option<Vec<Vec<u8>>> {
        Some(vec![b"id".to_vec(), b"ssn".to_vec(), b"notes".to_vec()])
    }

    #[test]
    fn text_custom_delimiter_null_and_header() {
        let format = CopyFormat::Text {
            delimiter: b'|',
            null: b"n/a".to_vec(),
            header: header(),
        };
        // The delimiter inside a value comes escaped: `\|` splits nothing, and a masked
        // value holding one is escaped again.
        let input = b"id|ssn|notes\n1|123-45-6789|mail a@b.io x\\|y\n2|n/a|a\\|b\n3|98\\|7-65-4321|tab\\there\n";
        assert_eq!(
            every_split(RULES, &format, input).unwrap(),
            b"id|ssn|notes\n1|***-**-6789|mail [E] x\\|y\n2|n/a|a\\|b\n3|**\\|*-**-4321|tab\\there\n"
        );
        // Read with the default tab the same rows are one field each: refused, not passed.
        assert!(run(CopyFormat::text(), false, &input[13..], 64).is_err());
    }

    #[test]
    fn csv_custom_quote_escape_null_and_header() {
        let format = CopyFormat::Csv {
            delimiter: b';',
            quote: b'\'',
            escape: b'\\',
            null: b"n/a".to_vec(),
            header: header(),
            force_quote: Vec::new(),
        };
        // Row 3's quoted 'n/a' is a string, not NULL: it is masked like any value.
        let input =
            b"id;ssn;notes\n1;'123;45-6789';'x;y a@b.io \\'q\\' \\\\'\n2;n/a;\n3;'n/a';'n/a'\n";
        assert_eq!(
            every_split(RULES, &format, input).unwrap(),
            b"id;ssn;notes\n1;'***;**-6789';'x;y [E] \\'q\\' \\\\'\n2;n/a;\n3;*/*;'n/a'\n"
        );
    }

    #[test]
    fn csv_header_with_quoted_names_and_forced_quotes() {
        let cols = [
            ColumnDesc::computed("id", 23),
            ColumnDesc::computed("ssn", 25),
            ColumnDesc::computed("a,\"b", 25),
        ];
        let rules = "[[rule]]\nname = \"ssn\"\ncolumn_name = \"ssn\"\nstrategy = \"redact\"\ntext = \"ssn\"\n";
        let format = CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
            header: Some(cols.iter().map(|c| c.name.clone()).collect()),
            force_quote: vec![true, true, false],
        };
        let p = policy(rules);
        let mut plan = p
            .plan_copy(
                &Subject::default(),
                Some(&cols),
                &Catalog::new(),
                &copy_out_response(false, 3),
                format,
            )
            .unwrap();
        let out = plan
            .mask_copy_data(
                copy_data(b"id,ssn,\"a,\"\"b\"\n\"1\",\"123-45-6789\",x\n\"2\",,\n"),
                &mut MaskStats::new(),
            )
            .unwrap();
        // The header is not masked although a rule covers "ssn"; forced columns stay
        // quoted after masking; NULL is never quoted.
        assert_eq!(
            payloads(&[out]),
            b"id,ssn,\"a,\"\"b\"\n\"1\",\"ssn\",x\n\"2\",,\n"
        );
    }

    #[test]
    fn a_header_that_does_not_name_the_columns_is_refused() {
        for (format, input) in [
            (
                CopyFormat::Text {
                    delimiter: b'\t',
                    null: b"\\N".to_vec(),
                    header: header(),
                },
                &b"1\t123-45-6789\tx\n"[..],
            ),
            (
                CopyFormat::Text {
                    delimiter: b'\t',
                    null: b"\\N".to_vec(),
                    header: header(),
                },
                b"id\tssn\n",
            ),
            (
                CopyFormat::Csv {
                    delimiter: b',',
                    quote: b'"',
                    escape: b'"',
                    null: Vec::new(),
                    header: header(),
                    force_quote: Vec::new(),
                },
                b"id,ssn,notes,x\n",
            ),
        ] {
            assert!(
                run(format, false, input, 64).is_err(),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn null_strategy_writes_the_null_string() {
        let rules = "[[rule]]\nname = \"ssn\"\ncolumn_name = \"ssn\"\nstrategy = \"null\"\n";
        let input = b"1\t123-45-6789\tx\n2\t\\N\ty\n";
        assert_eq!(
            every_split(rules, &CopyFormat::text(), input).unwrap(),
            b"1\t\\N\tx\n2\t\\N\ty\n"
        );
        let input = b"1,123-45-6789,x\n2,\"\",y\n";
        assert_eq!(
            every_split(rules, &CopyFormat::csv(), input).unwrap(),
            b"1,,x\n2,,y\n"
        );
        let format = CopyFormat::Csv {
            delimiter: b'|',
            quote: b'"',
            escape: b'"',
            null: b"n/a".to_vec(),
            header: None,
            force_quote: Vec::new(),
        };
        assert_eq!(
            every_split(rules, &format, b"1|123-45-6789|x\n").unwrap(),
            b"1|n/a|x\n"
        );
    }

    #[test]
    fn binary_format_any_split() {
        let mut input = SIGNATURE.to_vec();
        input.extend_from_slice(&0i32.to_be_bytes());
        input.extend_from_slice(&0i32.to_be_bytes());
        let tuple = |id: i32, ssn: Option<&[u8]>, notes: &[u8]| {
            let mut t = 3i16.to_be_bytes().to_vec();
            t.extend_from_slice(&4i32.to_be_bytes());
            t.extend_from_slice(&id.to_be_bytes());
            match ssn {
                Some(s) => {
                    t.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    t.extend_from_slice(s);
                }
                None => t.extend_from_slice(&(-1i32).to_be_bytes()),
            }
            t.extend_from_slice(&(notes.len() as i32).to_be_bytes());
            t.extend_from_slice(notes);
            t
        };
        let mut want = input.clone();
        input.extend(tuple(1, Some(b"123-45-6789"), b"hi a@b.io"));
        input.extend(tuple(2, None, b"clean"));
        input.extend_from_slice(b"\xff\xff");
        want.extend(tuple(1, Some(b"***-**-6789"), b"hi [E]"));
        want.extend(tuple(2, None, b"clean"));
        want.extend_from_slice(b"\xff\xff");
        for chunk in 1..input.len() + 1 {
            assert_eq!(
                run(CopyFormat::text(), true, &input, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
        // Truncated streams are errors at CopyDone, not passes.
        assert!(run(CopyFormat::text(), true, &input[..input.len() - 2], 7).is_err());
        let mut bad = input.clone();
        bad[0] = b'X';
        assert!(run(CopyFormat::text(), true, &bad, 64).is_err());
    }

    #[test]
    fn unchanged_messages_are_not_copied() {
        let p = policy(RULES);
        let mut plan = p
            .plan_copy(
                &Subject::default(),
                Some(&cols()),
                &Catalog::new(),
                &copy_out_response(false, 3),
                CopyFormat::text(),
            )
            .unwrap();
        let frame = copy_data(b"1\t\\N\tclean\n");
        let out = plan
            .mask_copy_data(frame.clone(), &mut MaskStats::new())
            .unwrap();
        assert_eq!(out.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn unknown_columns_fail_closed_unless_exempt() {
        let p = policy(&format!("exempt_roles = [\"auditor\"]\n{RULES}"));
        let resp = copy_out_response(false, 2);
        let err = p
            .plan_copy(
                &Subject::new("a", ["r"]),
                None,
                &Catalog::new(),
                &resp,
                CopyFormat::text(),
            )
            .unwrap_err();
        assert_eq!(err, MaskError::CopyColumnsUnknown);
        let plan = p
            .plan_copy(
                &Subject::new("a", ["auditor"]),
                None,
                &Catalog::new(),
                &resp,
                CopyFormat::text(),
            )
            .unwrap();
        assert!(plan.is_passthrough());
    }

    #[test]
    fn bad_rows_and_limits() {
        assert!(
            run(CopyFormat::text(), false, b"1\t2\n", 100).is_err(),
            "too few columns"
        );
        assert!(
            run(CopyFormat::text(), false, b"1\t2\t3\t4\n", 100).is_err(),
            "too many columns"
        );
        assert!(
            run(CopyFormat::text(), false, b"1\t2\t3", 100).is_err(),
            "unterminated"
        );
        let mut plan = text_plan(&policy(RULES)).with_max_carry(8);
        let err = plan
            .mask_copy_data(copy_data(b"1\t123456789012"), &mut MaskStats::new())
            .unwrap_err();
        assert_eq!(err, MaskError::CopyRowTooLarge { limit: 8 });
        assert!(parse_copy_out_response(b"H\0\0\0\x05\x02").is_err());
    }

    /// A text `COPY` of [`cols`] under `p`.
    fn text_plan(p: &Policy) -> CopyPlan {
        p.plan_copy(
            &Subject::default(),
            Some(&cols()),
            &Catalog::new(),
            &copy_out_response(false, 3),
            CopyFormat::text(),
        )
        .unwrap()
    }

    #[test]
    fn copy_data_masked_into_a_shared_buffer() {
        let p = policy(RULES);
        let plan = || text_plan(&p);
        let frame = copy_data(b"1\t123-45-6789\tmail a@b.example\n");
        let alone = plan()
            .mask_copy_data(frame.clone(), &mut MaskStats::new())
            .unwrap();
        let (mut plan, mut stats) = (plan(), MaskStats::new());
        let mut out = BytesMut::from(&b"xy"[..]);
        assert!(plan.mask_copy_into(&frame, &mut out, &mut stats).unwrap());
        // Half a row: consumed, nothing written yet; the rest completes it.
        let half = copy_data(b"2\t123-45-6789");
        assert!(plan.mask_copy_into(&half, &mut out, &mut stats).unwrap());
        assert_eq!(out.len(), 2 + alone.len());
        assert!(
            plan.mask_copy_into(&copy_data(b"\tnone\n"), &mut out, &mut stats)
                .unwrap()
        );
        let mut expected = b"xy".to_vec();
        expected.extend_from_slice(&alone);
        expected.extend_from_slice(&copy_data(b"2\t***-**-6789\tnone\n"));
        assert_eq!(&out[..], &expected[..]);
        // A malformed row fails and leaves the buffer as it was.
        assert!(
            plan.mask_copy_into(&copy_data(b"1\t2\n"), &mut out, &mut stats)
                .is_err()
        );
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn escapes_roundtrip() {
        let mut d = Vec::new();
        text_decode(b"a\\tb\\\\c\\nd\\101\\x41\\q", &mut d);
        assert_eq!(d, b"a\tb\\c\nd\x41\x41q");
        let mut e = BytesMut::new();
        text_encode(b"a\tb\\c\nd", b'\t', &mut e);
        assert_eq!(&e[..], b"a\\tb\\\\c\\nd");
        let mut e = BytesMut::new();
        text_encode(b"a|b\x08\x0b\x0c\t", b'|', &mut e);
        assert_eq!(&e[..], b"a\\|b\\b\\v\\f\\t");
        let mut d = Vec::new();
        text_decode(&e, &mut d);
        assert_eq!(d, b"a|b\x08\x0b\x0c\t");
        let mut c = Vec::new();
        csv_decode(b"\"a\"\"b,c\"", b'"', b'"', &mut c);
        assert_eq!(c, b"a\"b,c");
        let mut ce = BytesMut::new();
        csv_encode(b"a\"b,c", b'"', b'"', true, &mut ce);
        assert_eq!(&ce[..], b"\"a\"\"b,c\"");
    }
}
