//! An error with its causes on one line ("outer: inner: root"), for log lines: error messages
//! do not repeat their source, so printing only the top one would drop the cause (the top level
//! prints anyhow's `{:#}`, the same chain).
use std::{error::Error, fmt};

/// `format!("{}", ErrorChain(&err))`: the error, then each of its sources after a colon.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading subnet.env")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_every_cause_once() {
        let err = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        assert_eq!(ErrorChain(&err).to_string(), "reading subnet.env: gone");
    }
}
