//! Text that came from outside, made safe to pass on: cut to a bounded length.

/// Cuts `text` to at most `limit` bytes on a character boundary.
pub fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One line of at most `limit` bytes: every run of whitespace (newlines included)
/// becomes one space, and a longer text is cut with an ellipsis. For reasons kept
/// with a dead letter, where a cause's raw dump would otherwise land.
pub fn one_line(text: &str, limit: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.len() <= limit {
        return joined;
    }
    format!("{}…", cut(&joined, limit.saturating_sub(3)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_lines_and_bounds_the_length() {
        assert_eq!(one_line("a\n  b\r\n\tc", 100), "a b c");
        let long = one_line(&"x".repeat(1000), 100);
        assert!(long.len() <= 100 && long.ends_with('…'), "{long}");
    }

    #[test]
    fn cut_respects_character_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }
}
