//! Errors of the penalty crate.

/// Everything that can go wrong while computing a penalty or an evaluation norm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PenaltyError {
    /// A tensor operation failed inside Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The model crate reported an error.
    #[error(transparent)]
    Model(#[from] tulip_models::ModelError),

    /// Candle would silently drop the second-order terms of an exact penalty's gradient.
    #[error(
        "second-order gradients are not live on this thread: Candle detaches gradients unless \
         CANDLE_GRAD_DO_NOT_DETACH=1 is set before the thread's first backward pass, and the \
         exact Lipschitz penalty would then be trained on a silently wrong gradient. Set \
         CANDLE_GRAD_DO_NOT_DETACH=1 in the environment, or call \
         tulip_penalties::enable_second_order_gradients() at the start of main (binaries) or of \
         the test, before any backward pass on this thread; or use the finite-difference penalty"
    )]
    SecondOrderGradientsNotLive,

    /// A penalty that differentiates with respect to the input was given an input that is
    /// not a Candle variable, so no graph from the input to the loss exists.
    #[error(
        "the {penalty} penalty needs the input batch as a Candle variable (x.is_variable()), \
         so that the loss can be differentiated with respect to it"
    )]
    InputNotVariable {
        /// The penalty's name.
        penalty: &'static str,
    },

    /// A configuration value no penalty can be built from.
    #[error("invalid penalty configuration: {0}")]
    InvalidConfig(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, PenaltyError>;
