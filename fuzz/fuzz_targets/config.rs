//! The configuration loader on arbitrary text: every pass (TOML, interpolation,
//! decoding, every check, the planner's compilation) must refuse or accept, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name.len() % 2 == 0).then(|| format!("value-of-{name}"));
    let _ = gitdispatch::app::from_toml_str(text, &env);
});
