//! Errors of the adversarial-perturbation crate.

/// Everything that can go wrong while configuring or computing a perturbation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdversarialError {
    /// A tensor operation failed inside Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The model crate reported an error.
    #[error(transparent)]
    Model(#[from] tulip_models::ModelError),

    /// Computing an input gradient failed.
    #[error(transparent)]
    Penalty(#[from] tulip_penalties::PenaltyError),

    /// A configuration value no perturbation can be built from.
    #[error("invalid perturbation configuration: {0}")]
    InvalidConfig(String),

    /// A textual PGD configuration could not be parsed.
    #[error("cannot parse PGD configuration {input:?}: {reason}")]
    Parse {
        /// The whole text given.
        input: String,
        /// What is wrong, naming the offending key or value.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, AdversarialError>;
