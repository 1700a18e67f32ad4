#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    fetchfs::fuzzing::percent(input.0, input.1);
});
