#![no_main]
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    start: u16,
    len: u16,
    partial: bool,
    splits: Vec<u16>,
    object: &'a [u8],
}

fuzz_target!(|i: Input| {
    let start = u64::from(i.start % 8192);
    let requested = start..start + u64::from(i.len % 8192);
    fetchfs::fuzzing::range_honest(i.object, requested, i.partial, &i.splits);
});
