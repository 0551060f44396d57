//! Errors of the model crate.

use std::path::PathBuf;

/// Everything that can go wrong while building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A tensor operation failed inside Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A configuration value that no model can be built from.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),

    /// Reading or writing a checkpoint file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The file is not a readable safetensors file.
    #[error("{path}: not a valid safetensors checkpoint: {reason}")]
    BadCheckpoint {
        /// The file involved.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },

    /// The checkpoint's content does not match the checksum it was written with.
    #[error("{path}: the checkpoint is corrupt: its tensors and metadata do not match the SHA-256 it was written with (expected {expected}, found {found}); use another checkpoint of the run or retrain")]
    CorruptCheckpoint {
        /// The file involved.
        path: PathBuf,
        /// The checksum stored in the file.
        expected: String,
        /// The checksum of what the file holds now.
        found: String,
    },

    /// The checkpoint does not hold exactly the tensors of the model it is loaded into.
    #[error("{path}: checkpoint does not match the model ({})", describe_mismatch(.missing, .unexpected, .mis_shaped))]
    CheckpointMismatch {
        /// The file involved.
        path: PathBuf,
        /// Tensors the model has and the file lacks.
        missing: Vec<String>,
        /// Tensors the file has and the model lacks.
        unexpected: Vec<String>,
        /// `name: expected [..], found [..]` for tensors whose shape differs.
        mis_shaped: Vec<String>,
    },
}

fn describe_mismatch(missing: &[String], unexpected: &[String], mis_shaped: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing tensors: {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected tensors: {}", unexpected.join(", ")));
    }
    if !mis_shaped.is_empty() {
        parts.push(format!("wrong shapes: {}", mis_shaped.join("; ")));
    }
    parts.join("; ")
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
