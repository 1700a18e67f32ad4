#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fetchfs::fuzzing::b2_json(data);
});
