//! What every module's errors share: a boxed cause, and a way to show an error with
//! the chain of its causes in one line (for logs and dead-letter reasons).

use std::error::Error;
use std::fmt;

/// The cause an error keeps, whatever it was.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Shows an error and its causes, `outer: inner: innermost`, skipping a cause whose
/// text its parent already shows.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_shows_every_cause_once() {
        let error = Outer(std::io::Error::other("disk full"));
        assert_eq!(Chain(&error).to_string(), "outer: disk full");
    }
}
