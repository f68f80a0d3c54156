//! VXLAN header parsing and re-emission on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_wire::vxlan::{VxlanPacket, VxlanRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = VxlanPacket::new_checked(data) else { return };
    let _ = packet.payload();
    if let Ok(repr) = VxlanRepr::parse(&packet) {
        let mut out = data.to_vec();
        repr.emit(&mut VxlanPacket::new_unchecked(&mut out[..]));
        let again = VxlanRepr::parse(&VxlanPacket::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(again, repr);
    }
});
