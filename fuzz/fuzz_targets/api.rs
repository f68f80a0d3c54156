//! The local API's request bodies: JSON into each body type the routes
//! take (the first byte picks one), and a service spec through the
//! orchestrator's type and back, which must give the same spec again; an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_agent::api::views;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            let Ok(spec) = serde_json::from_slice::<views::ServiceSpec>(body) else { return };
            let Ok(orch) = shoal_orch::ServiceSpec::try_from(&spec) else { return };
            let shown = views::ServiceSpec::from(&orch);
            let again = shoal_orch::ServiceSpec::try_from(&shown).expect("a spec the API shows is accepted back");
            assert_eq!(again, orch, "a service spec survives the docker shape");
        }
        1 => {
            let _ = serde_json::from_slice::<views::VolumeCreate>(body);
        }
        2 => {
            let _ = serde_json::from_slice::<shoal_agent::swarm::NodeUpdate>(body);
        }
        _ => {
            let _ = serde_json::from_slice::<shoal_agent::swarm::InitRequest>(body);
        }
    }
});
