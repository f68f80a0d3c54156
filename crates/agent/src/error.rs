//! The agent's one error type. Every variant says whose fault it is, which
//! is all the API needs to pick a status (`api::error`); the message is
//! what the user reads, in docker's style: what failed and what to do.

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is wrong and the user can fix it.
    #[error("{0}")]
    Invalid(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// The object exists already, is in use, or changed meanwhile.
    #[error("{0}")]
    Conflict(String),
    /// The request's body is larger than the API takes.
    #[error("{0}")]
    TooLarge(String),
    /// This node is not in the state the request needs (in no swarm, not
    /// the manager, the manager unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// The cluster state store failed.
    #[error(transparent)]
    Store(#[from] shoal_control::StoreError),
    /// Certificates or randomness failed.
    #[error(transparent)]
    Ca(#[from] shoal_control::CaError),
    /// A file or system call on this node failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Something else failed on this node.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An [`Error::Io`] while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// An [`Error::Internal`] from anything printable.
    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }
}

/// The agent's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
