//! The engine's error: what went wrong, with the kind the binary maps to
//! an exit code and the source errors kept for the chain.

/// A boxed error from any stage, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What stops a run or a command before it could report on its units.
/// Outcomes of units (failed, not run) and of the run (account problem,
/// spend cap, interrupted) are not errors: they are in the
/// [`RunReport`](crate::RunReport).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad pipeline file, settings or input: the user fixes the input.
    #[error("{0}")]
    Input(String),
    /// Another run of the same pipeline and snapshot date holds the day
    /// (its lock): this one did not start.
    #[error("{0}")]
    Held(String),
    /// A step of the run failed; `context` says which, `source` why.
    #[error("{context}")]
    Step {
        context: String,
        #[source]
        source: BoxError,
    },
}

/// What kind of problem an [`Error`] is, for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad pipeline file, settings or input.
    Input,
    /// Another run of the same pipeline and day is going on.
    Held,
    /// Anything else: a sink, the state directory, a task.
    Run,
}

impl Error {
    /// The kind of the error, looking through the steps that wrap it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Input(_) => ErrorKind::Input,
            Error::Held(_) => ErrorKind::Held,
            Error::Step { source, .. } => source
                .downcast_ref::<Error>()
                .map_or(ErrorKind::Run, Error::kind),
        }
    }

    pub(crate) fn input(message: impl Into<String>) -> Self {
        Error::Input(message.into())
    }
}

/// The engine's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what the engine was doing to an error from a stage.
pub(crate) trait Context<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E> Context<T> for std::result::Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Step {
            context: context.into(),
            source: Box::new(source),
        })
    }

    fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Step {
            context: context(),
            source: Box::new(source),
        })
    }
}

/// An error and its sources on one line: `a: b: c`.
pub use backlinks_model::error::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_found_through_steps_and_the_chain_reads_in_order() {
        let input: Result<()> = Err(Error::input("targets.csv line 3: not a domain"));
        let wrapped = input.context("loading targets").unwrap_err();
        assert_eq!(wrapped.kind(), ErrorKind::Input);
        assert_eq!(
            chain(&wrapped),
            "loading targets: targets.csv line 3: not a domain"
        );
        let io: std::result::Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
        let wrapped = io.context("writing the manifest").unwrap_err();
        assert_eq!(wrapped.kind(), ErrorKind::Run);
        assert_eq!(chain(&wrapped), "writing the manifest: disk full");
    }
}
