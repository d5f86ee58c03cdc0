//! Runs the `mask_rows` fuzz target's body on seeds and pseudo-random inputs under plain
//! `cargo test`, so the target keeps compiling and the easy crashes are caught in CI.

include!("../fuzz/fuzz_targets/mask_rows_body.rs");

#[test]
fn fuzz_body_survives_seeds_and_noise() {
    let mut seeds: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        b"\x00\x00\x04\x00\x00\x00\x0b123-45-6789\xff\xff\xff\xff\x00\x00\x00\x01x\x00\x00\x00\x03\x01{}".to_vec(),
        b"\x40123-45-6789\t4111 1111 1111 1111\t\\N\t{}\n".to_vec(),
        b"\x80PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0\x00\x04\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
    ];
    let mut state = 0x1234_5678_9abc_def0u64;
    for _ in 0..2000 {
        let mut v = Vec::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 96) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.push(b"0123456789-\t\n\\\" @.DEN\x00\x01\x04\xff"[(state % 24) as usize]);
        }
        seeds.push(v);
    }
    for s in &seeds {
        run(s);
    }
}
