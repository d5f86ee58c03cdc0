//! The parse tree as libpg_query prints it: JSON in which every node is an object with one
//! key, its type (`{"ColumnRef": {"fields": [...]}}`), read into a compact borrowed tree.
//!
//! Why JSON and not the crate's protobuf structs: the walker must see every node of every
//! statement, including node types it has no rule for (those are treated as opaque, never
//! skipped). A self-describing tree gives that for all ~240 node types with one generic
//! descent; the typed structs would need a hand-written child list per type, and a type
//! left out would be a node nobody looked at. Reading it with `serde_json` into this tree
//! (borrowed keys, no maps) measured 2x faster than `serde_json::Value` and faster than
//! the crate's own protobuf path (27 vs 42 µs for a two-table join with a sort).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One JSON value of the parse tree.
#[derive(Debug, Clone, PartialEq)]
pub enum J<'a> {
    Obj(Vec<(Cow<'a, str>, J<'a>)>),
    Arr(Vec<J<'a>>),
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

static EMPTY: [J<'static>; 0] = [];

impl<'a> J<'a> {
    /// A field of an object (`None` for a missing field: libpg_query omits defaults).
    pub fn get(&self, key: &str) -> Option<&J<'a>> {
        match self {
            J::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A node's type and fields, if this is a node (an object with one key that names a
    /// type; types start with an upper-case letter, fields never do).
    pub fn node(&self) -> Option<(&str, &J<'a>)> {
        match self {
            J::Obj(fields) if fields.len() == 1 => {
                let (k, v) = &fields[0];
                k.starts_with(|c: char| c.is_ascii_uppercase())
                    .then_some((k.as_ref(), v))
            }
            _ => None,
        }
    }

    /// The fields of `node` when it is a node of type `ty`.
    pub fn as_node(&self, ty: &str) -> Option<&J<'a>> {
        self.node().filter(|(t, _)| *t == ty).map(|(_, f)| f)
    }

    pub fn arr(&self) -> &[J<'a>] {
        match self {
            J::Arr(items) => items,
            _ => &EMPTY,
        }
    }

    /// A list field (missing means empty).
    pub fn list(&self, key: &str) -> &[J<'a>] {
        self.get(key).map(J::arr).unwrap_or(&EMPTY)
    }

    pub fn str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A string field, `""` when missing.
    pub fn text(&self, key: &str) -> &str {
        self.get(key).and_then(J::str).unwrap_or("")
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some(J::Bool(true)))
    }

    pub fn int(&self, key: &str) -> i64 {
        match self.get(key) {
            Some(J::Int(i)) => *i,
            _ => 0,
        }
    }

    /// The object's fields, for a generic descent.
    pub fn fields(&self) -> &[(Cow<'a, str>, J<'a>)] {
        match self {
            J::Obj(f) => f,
            _ => &[],
        }
    }
}

/// Reads libpg_query's JSON. Errors (which a well-formed parse never gives) and the depth
/// limit of `serde_json` (128) are refusals, never panics.
pub fn read(json: &str) -> Result<J<'_>, serde_json::Error> {
    serde_json::from_str(json)
}

impl<'de> Deserialize<'de> for J<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = J<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a libpg_query parse tree")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<J<'de>, E> {
        Ok(J::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<J<'de>, E> {
        Ok(J::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<J<'de>, E> {
        Ok(i64::try_from(v).map_or(J::Float(v as f64), J::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<J<'de>, E> {
        Ok(J::Float(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(2));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(J::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J<'de>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(k) = map.next_key::<Key<'de>>()? {
            fields.push((k.0, map.next_value()?));
        }
        Ok(J::Obj(fields))
    }
}

/// A key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match J::deserialize(d)? {
            J::Str(s) => Ok(Key(s)),
            _ => Err(de::Error::custom("object key is not a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nodes_lists_and_escapes() {
        let t = read(r#"{"A":{"x":[1,{"B":{}}],"s":"a\"b","f":true}}"#).unwrap();
        let (ty, f) = t.node().unwrap();
        assert_eq!(ty, "A");
        assert_eq!(f.list("x").len(), 2);
        assert_eq!(f.text("s"), "a\"b");
        assert!(f.flag("f"));
        assert!(f.list("x")[1].as_node("B").is_some());
        assert_eq!(f.text("missing"), "");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(read(&deep).is_err());
    }
}
