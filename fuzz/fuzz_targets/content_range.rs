#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u64, u64, u64)| {
    let (text, a, len, total) = input;
    fetchfs::fuzzing::content_range(text, a, len % (1 << 40), total);
});
