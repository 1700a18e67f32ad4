#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Invalid UTF-8 is replaced, as the HTTP source does with a page it reads.
    fetchfs::fuzzing::autoindex(&String::from_utf8_lossy(data));
});
