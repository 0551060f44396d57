//! Errors of the evaluation crate.

use std::path::PathBuf;

/// Everything that can go wrong while evaluating a model or writing a report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A tensor operation failed inside Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The model crate reported an error.
    #[error(transparent)]
    Model(#[from] tulip_models::ModelError),

    /// A penalty or evaluation norm failed.
    #[error(transparent)]
    Penalty(#[from] tulip_penalties::PenaltyError),

    /// The data crate reported an error.
    #[error(transparent)]
    Data(#[from] tulip_data::DataError),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A file that does not have the expected contents.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it (line numbers are 1-based and count the header).
        reason: String,
    },

    /// Arguments no evaluation can be run with (empty split, zero block size, …).
    #[error("invalid evaluation input: {0}")]
    InvalidInput(String),
}

impl EvalError {
    /// An [`EvalError::Io`] for `path`.
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;
