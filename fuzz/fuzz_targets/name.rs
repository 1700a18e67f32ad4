#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|name: &str| {
    fetchfs::fuzzing::name(name);
});
