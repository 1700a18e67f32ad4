#![no_main]
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    start: u16,
    len: u16,
    expected: Option<u16>,
    status: u8,
    content_length: Option<&'a str>,
    content_range: Option<&'a str>,
    splits: Vec<u16>,
    body: &'a [u8],
}

fuzz_target!(|i: Input| {
    // Small numbers so the headers the fuzzer writes can match the range and the body.
    let status = [200, 206, 416, 500, 204][i.status as usize % 5];
    let start = u64::from(i.start % 4096);
    let requested = start..start + u64::from(i.len % 4096);
    let answer = fetchfs::fuzzing::RangeAnswer {
        status,
        content_length: i.content_length,
        content_range: i.content_range,
        body: i.body,
    };
    fetchfs::fuzzing::range_plan(requested, i.expected.map(u64::from), &answer, &i.splits);
});
