//! The Lipschitz penalty of the paper, by exact double backpropagation.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::norm::{nan_where_nan, row_norms, Norm};
use crate::second_order::{check_variable, ensure_second_order_gradients};
use crate::{FiniteDifferencePenalty, Penalty, PenaltyInputs, Result};

/// How the per-example gradient norms of a batch are summarised into one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[non_exhaustive]
#[serde(rename_all = "kebab-case")]
pub enum Summary {
    /// The largest over the batch (the paper's choice, the default of the exact penalty).
    Max,
    /// The batch mean (the follow-up paper's choice, the default of the finite-difference
    /// penalty).
    Mean,
}

impl Summary {
    /// Summarises `[B]` values into a scalar tensor (differentiably). A `NaN` among them
    /// makes the summary `NaN`, for the maximum as for the mean.
    ///
    /// # Errors
    /// Fails if `v` is not a non-empty vector.
    pub fn apply(self, v: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Summary::Max => nan_where_nan(v, 0, &v.max(0)?)?,
            Summary::Mean => v.mean(0)?,
        })
    }
}

/// How the Lipschitz penalty is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[non_exhaustive]
#[serde(rename_all = "kebab-case")]
pub enum PenaltyMethod {
    /// Exact double backpropagation ([`LipschitzPenalty`], the paper). Needs second-order
    /// gradients (see [`crate::enable_second_order_gradients`]).
    Exact,
    /// A finite difference along the normalised input gradient
    /// ([`FiniteDifferencePenalty`], Finlay & Oberman 2019): first-order only.
    FiniteDifference,
}

impl PenaltyMethod {
    /// Builds the penalty. `h` is used by [`PenaltyMethod::FiniteDifference`] only.
    ///
    /// # Errors
    /// [`crate::PenaltyError::SecondOrderGradientsNotLive`] for the exact method when
    /// second-order gradients are off on this thread;
    /// [`crate::PenaltyError::InvalidConfig`] for a step `h` that is not positive and finite.
    pub fn build(self, norm: Norm, summary: Summary, h: f64) -> Result<Box<dyn Penalty>> {
        Ok(match self {
            PenaltyMethod::Exact => Box::new(LipschitzPenalty::new(norm, summary)?),
            PenaltyMethod::FiniteDifference => Box::new(
                FiniteDifferencePenalty::new(h)?
                    .with_norm(norm)
                    .with_summary(summary),
            ),
        })
    }
}

/// `P(x) = summary_i ‖g_i‖` with `g = ∇_x L(x)` the input gradient of the *batch-mean*
/// loss, so that each row carries the reference's `1/B` factor (docs/method.md §2),
/// computed by exact double backpropagation so that `P` can itself be differentiated with
/// respect to the parameters.
///
/// Its [`Penalty::value`] needs `inputs.x` to be a Candle variable on the graph of
/// `inputs.loss` ([`Penalty::needs_input_graph`] is true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LipschitzPenalty {
    norm: Norm,
    summary: Summary,
}

impl LipschitzPenalty {
    /// A penalty with the given norm and batch summary.
    ///
    /// # Errors
    /// [`crate::PenaltyError::SecondOrderGradientsNotLive`] if Candle would silently compute
    /// a wrong gradient on this thread.
    pub fn new(norm: Norm, summary: Summary) -> Result<Self> {
        ensure_second_order_gradients()?;
        Ok(Self { norm, summary })
    }

    /// The paper's penalty: 2-norm, max over the batch.
    ///
    /// # Errors
    /// As [`LipschitzPenalty::new`].
    pub fn paper() -> Result<Self> {
        Self::new(Norm::L2, Summary::Max)
    }

    /// The norm of the input gradient.
    pub fn norm(&self) -> Norm {
        self.norm
    }

    /// The summary over the batch.
    pub fn summary(&self) -> Summary {
        self.summary
    }
}

impl Penalty for LipschitzPenalty {
    fn name(&self) -> &'static str {
        "lipschitz"
    }

    fn needs_input_graph(&self) -> bool {
        true
    }

    /// # Errors
    /// [`crate::PenaltyError::SecondOrderGradientsNotLive`] if the calling thread has
    /// second-order gradients off (checked on every call, cached per thread);
    /// [`crate::PenaltyError::InputNotVariable`] if `inputs.x` is not a variable.
    fn value(&self, inputs: &PenaltyInputs<'_>) -> Result<Tensor> {
        ensure_second_order_gradients()?;
        check_variable(inputs.x, self.name())?;
        // Only the input's gradient is read: the kernels' gradients are skipped.
        let grads = tulip_models::input_gradient_only(|| inputs.loss.backward())?;
        let g = match grads.get(inputs.x) {
            Some(g) => g.clone(),
            // The loss does not depend on the input: the penalty is 0 (and constant).
            None => inputs.x.detach().zeros_like()?,
        };
        self.summary.apply(&row_norms(&g, self.norm)?)
    }
}
