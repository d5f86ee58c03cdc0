//! Whatever bytes a binary array, record, range or multirange holds, the walker that
//! masks their text leaves must not panic, and a value it accepts must come out with
//! consistent lengths: walking its own output again gives the same bytes.
#![no_main]

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use portcullis::mask::MaskError;
use portcullis::mask::binary::{Leaf, LeafOut, TypeKind, rewrite};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else { return };
    let mut kinds = HashMap::new();
    kinds.insert(20000u32, TypeKind::Record);
    kinds.insert(20001, TypeKind::Range(25));
    kinds.insert(20002, TypeKind::Multirange(20001));
    kinds.insert(20003, TypeKind::Domain(1009));
    let oid = [1009u32, 2249, 20000, 20001, 20002, 20003, 3802, 2287][pick as usize % 8];
    // Every leaf with an 'x' is shortened to one byte: lengths must be rewritten.
    let mut shorten = |l: Leaf<'_>, out: &mut BytesMut| -> Result<LeafOut, MaskError> {
        if l.text.contains(&b'x') {
            out.put_u8(b'#');
            Ok(LeafOut::Written)
        } else {
            Ok(LeafOut::Keep)
        }
    };
    let mut out = BytesMut::new();
    if rewrite(&kinds, oid, value, &mut shorten, &mut out).is_ok() {
        let mut again = BytesMut::new();
        let changed = rewrite(&kinds, oid, &out, &mut shorten, &mut again)
            .expect("the walker's own output walks");
        assert!(!changed, "a second walk found more to rewrite");
        assert_eq!(again, out);
    }
});
