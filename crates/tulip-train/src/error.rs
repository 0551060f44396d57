//! Errors of the training crate.

use std::path::PathBuf;

/// Everything that can stop a training run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Building, saving or loading the model failed.
    #[error(transparent)]
    Model(#[from] tulip_models::ModelError),
    /// Loading the data failed.
    #[error(transparent)]
    Data(#[from] tulip_data::DataError),
    /// A penalty could not be built or computed.
    #[error(transparent)]
    Penalty(#[from] tulip_penalties::PenaltyError),
    /// A perturbation could not be computed.
    #[error(transparent)]
    Perturbation(#[from] tulip_adversarial::AdversarialError),
    /// A configuration value is out of range; the message names the setting.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Reading or writing a run file failed.
    // `error`, not `source`: the message already includes it, and a `source` would be
    // printed twice by error-chain reporters (`{:#}`).
    #[error("{path}: {error}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A run file exists but cannot be understood.
    #[error("{path}: {reason}")]
    BadRunFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The loss became NaN or infinite; the files written so far are kept.
    #[error("training diverged: the loss became {value} at epoch {epoch}, step {step}; the run directory keeps the last good checkpoint (try a smaller --lr)")]
    NonFiniteLoss {
        /// The offending value.
        value: f64,
        /// Epoch (0-based) of the step.
        epoch: usize,
        /// Global step index.
        step: usize,
    },
    /// The test error stayed at chance level for several epochs.
    #[error("training diverged: test error at chance level ({error:.2}%) for {epochs} consecutive epochs; the run directory keeps its files (try a smaller --lr)")]
    ChanceLevel {
        /// The last test error, %.
        error: f64,
        /// Number of consecutive epochs.
        epochs: usize,
    },
    /// The run was stopped on request (Ctrl-C) after writing a checkpoint.
    #[error(
        "interrupted at epoch {epoch}, step {step}; checkpoint written, continue with --resume"
    )]
    Interrupted {
        /// Epoch (0-based) in progress.
        epoch: usize,
        /// Global step index reached.
        step: usize,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
