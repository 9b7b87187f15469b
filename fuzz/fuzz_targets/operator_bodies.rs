//! The operator API's request bodies on arbitrary bytes: a lane's pause, a replay, a
//! trigger (decoded, then planned against the example configuration's pipelines). The
//! first byte picks which; each must refuse with a status and a one-line reason, or
//! accept, never panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use gitdispatch::plan::Planner;
use libfuzzer_sys::fuzz_target;

fn planner() -> &'static Arc<Planner> {
    static PLANNER: OnceLock<Arc<Planner>> = OnceLock::new();
    PLANNER.get_or_init(|| {
        let text = include_str!("../../config/gitdispatch.toml");
        let env = |_: &str| Some("a-secret-of-16-bytes-at-least".to_string());
        gitdispatch::app::from_toml_str(text, &env)
            .expect("the example configuration loads")
            .planner
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Err(refusal) = gitdispatch::server::bodies::pause_reason(body) {
                assert!(matches!(refusal.status, 400 | 422));
                assert!(!refusal.reason.contains('\n'));
            }
        }
        1 => {
            if let Err(refusal) = gitdispatch::server::bodies::replay(body) {
                assert!(matches!(refusal.status, 400 | 422));
                assert!(!refusal.reason.contains('\n'));
            }
        }
        _ => {
            if let Ok(event) = gitdispatch::source::manual::decode(body, None) {
                let _ = planner().plan(&event);
            }
        }
    }
});
