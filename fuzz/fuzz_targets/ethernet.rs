//! Ethernet header parsing and re-emission on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_wire::EthernetFrame;
use shoal_wire::ethernet::EthernetRepr;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = EthernetFrame::new_checked(data) else { return };
    let repr = EthernetRepr::parse(&frame).unwrap();
    let mut out = data.to_vec();
    repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
    assert_eq!(out, data);
});
