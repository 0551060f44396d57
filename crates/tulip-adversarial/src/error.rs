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

    /// The model's logits for a clean image hold an infinity or a NaN: its prediction (an
    /// arg-max over them) and every distance measured from it would mean nothing.
    #[error(
        "the model's logits for image {image} of the batch are not finite (inf or NaN): the \
         model overflows on this input, so no prediction or attack distance can be reported"
    )]
    NonFiniteCleanLogits {
        /// Index of the image in the batch given to the attack.
        image: usize,
    },

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
