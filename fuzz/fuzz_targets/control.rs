//! The 2377 protocol's decoding of arbitrary frames, both ways: a message
//! or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_control::protocol::{Request, Response, decode};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Request>(data);
    let _ = decode::<Response>(data);
});
