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

    /// An attack failed (bad configuration, or a model that overflows).
    #[error(transparent)]
    Attack(Box<tulip_adversarial::AdversarialError>),

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

    /// A model, or a result computed from it, holds NaN or infinite values, so no
    /// statistic of it means anything (a diverged training run, an overflow).
    #[error("not finite: {0}")]
    NonFinite(String),
}

impl From<tulip_adversarial::AdversarialError> for EvalError {
    fn from(e: tulip_adversarial::AdversarialError) -> Self {
        EvalError::Attack(Box::new(e))
    }
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

/// Writes `bytes` to `path` atomically (a temporary file beside it, synced, then renamed
/// over it), so a failed write, a full disk included, leaves the old file or none, never
/// a truncated one.
pub(crate) fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    tulip_models::checkpoint::write_atomic(path, bytes).map_err(EvalError::io(path))
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;
