//! The GitHub-Actions glob lists on arbitrary patterns and names: compiling refuses or
//! accepts, matching answers, neither panics; case-insensitive repository lists agree
//! with a lowercased match.
#![no_main]

use arbitrary::Arbitrary;
use gitdispatch::pattern::PatternList;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Case {
    patterns: Vec<String>,
    names: Vec<String>,
}

fuzz_target!(|case: Case| {
    if let Ok(list) = PatternList::compile(&case.patterns) {
        for name in &case.names {
            let _ = list.matches(name);
        }
    }
    if let Ok(list) = PatternList::compile_repositories(&case.patterns) {
        for name in &case.names {
            if name.is_ascii() {
                assert_eq!(list.matches(name), list.matches(&name.to_ascii_lowercase()));
            }
        }
    }
});
