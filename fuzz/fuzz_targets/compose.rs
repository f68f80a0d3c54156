//! Compose files through the whole of `stack deploy`'s reading: parsed,
//! interpolated, resolved, checked, merged; a stack or an error with a
//! position, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_compose::{Resolver, Vars};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let vars = Vars::new([("TAG".to_owned(), "1".to_owned())], []);
    let Ok(file) = shoal_compose::parse("f.yml", text) else { return };
    let Ok(stack) = shoal_compose::stack::resolve(&file, &mut Resolver::new("f.yml", &vars)) else { return };
    let _ = stack.check("f.yml");
    let _ = stack.start_order();
    let _ = stack.clone().merge(stack);
});
