//! Glob lists with the semantics GitHub Actions users know from `branches`, `tags` and
//! `paths`: `*` stays within one path segment, `**` crosses them, and a pattern that
//! starts with `!` excludes what earlier patterns included (the last matching pattern
//! decides).

use globset::{Glob, GlobBuilder, GlobMatcher};

/// Compiles one glob with GitHub Actions' rules (`*` does not cross `/`). Branch, tag
/// and path names are case-sensitive, as Git's are.
pub fn compile_glob(pattern: &str) -> Result<GlobMatcher, String> {
    compile(pattern, false)
}

/// Compiles a glob over repository names (`owner/name`), which GitHub (and CodeCommit
/// in its ARNs' eyes) treats case-insensitively: `acme/*` takes `Acme/API`.
pub fn compile_repository_glob(pattern: &str) -> Result<GlobMatcher, String> {
    compile(pattern, true)
}

fn compile(pattern: &str, case_insensitive: bool) -> Result<GlobMatcher, String> {
    if pattern.is_empty() {
        return Err("an empty pattern matches nothing".to_string());
    }
    let rewritten = expand_leading_double_star(pattern);
    let glob: Glob = GlobBuilder::new(&rewritten)
        .literal_separator(true)
        .backslash_escape(true)
        .case_insensitive(case_insensitive)
        .build()
        .map_err(|error| format!("{pattern:?} is not a valid glob: {}", error.kind()))?;
    Ok(glob.compile_matcher())
}

/// GitHub reads `**.js` as "any `.js` file at any depth"; globset reads a `**` that is
/// not a whole path segment as `*`. Rewrite `**X` at a segment start to `**/*X`.
fn expand_leading_double_star(pattern: &str) -> String {
    let mut output = String::with_capacity(pattern.len() + 2);
    let mut rest = pattern;
    while let Some(position) = rest.find("**") {
        let at_segment_start = position == 0 && (output.is_empty() || output.ends_with('/'))
            || rest[..position].ends_with('/');
        output.push_str(&rest[..position]);
        let after = &rest[position + 2..];
        output.push_str("**");
        if at_segment_start && !after.is_empty() && !after.starts_with('/') {
            output.push_str("/*");
        }
        rest = after;
    }
    output.push_str(rest);
    output
}

/// An ordered list of include (`pattern`) and exclude (`!pattern`) globs.
#[derive(Debug, Clone)]
pub struct PatternList {
    patterns: Vec<(bool, GlobMatcher, String)>,
}

impl PatternList {
    /// Compiles every pattern; the errors are `(index, message)` pairs.
    pub fn compile(patterns: &[String]) -> Result<PatternList, Vec<(usize, String)>> {
        PatternList::compile_with(patterns, false)
    }

    /// Compiles patterns over repository names, matched case-insensitively.
    pub fn compile_repositories(patterns: &[String]) -> Result<PatternList, Vec<(usize, String)>> {
        PatternList::compile_with(patterns, true)
    }

    fn compile_with(
        patterns: &[String],
        case_insensitive: bool,
    ) -> Result<PatternList, Vec<(usize, String)>> {
        let mut compiled = Vec::with_capacity(patterns.len());
        let mut errors = Vec::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let (negated, body) = match pattern.strip_prefix('!') {
                Some(body) => (true, body),
                None => (false, pattern.as_str()),
            };
            match compile(body, case_insensitive) {
                Ok(matcher) => compiled.push((negated, matcher, pattern.clone())),
                Err(message) => errors.push((index, message)),
            }
        }
        if errors.is_empty() {
            Ok(PatternList { patterns: compiled })
        } else {
            Err(errors)
        }
    }

    /// Whether the last pattern that matches `value` is an include pattern.
    pub fn matches(&self, value: &str) -> bool {
        self.patterns
            .iter()
            .rev()
            .find(|(_, matcher, _)| matcher.is_match(value))
            .is_some_and(|(negated, _, _)| !negated)
    }

    /// The patterns as written, for explanations.
    pub fn describe(&self) -> String {
        let shown: Vec<&str> = self
            .patterns
            .iter()
            .map(|(_, _, written)| written.as_str())
            .collect();
        format!("[{}]", shown.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> PatternList {
        let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        PatternList::compile(&owned).unwrap()
    }

    #[test]
    fn star_stays_within_a_segment_and_double_star_crosses() {
        let single = list(&["hotfix/*"]);
        assert!(single.matches("hotfix/a"));
        assert!(!single.matches("hotfix/a/b"));
        assert!(!single.matches("main"));
        let double = list(&["hotfix/**"]);
        assert!(double.matches("hotfix/a/b"));
        let paths = list(&["**.js"]);
        assert!(paths.matches("app.js"));
        assert!(paths.matches("src/deep/app.js"));
        let docs = list(&["docs/**"]);
        assert!(docs.matches("docs/a/b.md"));
        assert!(!docs.matches("src/docs.md"));
    }

    #[test]
    fn the_last_matching_pattern_decides() {
        let patterns = list(&["releases/**", "!releases/**-alpha", "releases/keep-alpha"]);
        assert!(patterns.matches("releases/1.0"));
        assert!(!patterns.matches("releases/1.0-alpha"));
        assert!(patterns.matches("releases/keep-alpha"));
        assert!(!patterns.matches("main"));
    }

    #[test]
    fn double_star_prefix_reaches_any_depth() {
        assert_eq!(expand_leading_double_star("**.js"), "**/*.js");
        assert_eq!(expand_leading_double_star("src/**.js"), "src/**/*.js");
        assert_eq!(expand_leading_double_star("src/**"), "src/**");
        assert_eq!(expand_leading_double_star("**/x"), "**/x");
        assert_eq!(expand_leading_double_star("a**b"), "a**b");
    }

    #[test]
    fn invalid_patterns_are_reported_by_index() {
        let errors = PatternList::compile(&["ok".into(), "[".into(), "".into()]).unwrap_err();
        assert_eq!(
            errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }
}
