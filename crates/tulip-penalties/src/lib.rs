//! # tulip-penalties
//!
//! The regularisers of Tulip-rs (docs/method.md §1–§2): the Lipschitz penalty
//! `summary_i ‖∇_x L‖` by exact double backpropagation (the paper, arXiv:1810.00953) or
//! by a finite difference (arXiv:1905.11468), the Tikhonov penalty `Σ ‖θ‖²`, and the
//! evaluation-only Jacobian and weight-product norms. Every penalty implements
//! [`Penalty`]; the trainer adds `weight · value` to its loss and differentiates the sum.
//!
//! Every penalty takes any Candle model that implements [`candle_nn::ModuleT`] (a
//! closure through `candle_nn::func_t` too); only the weight-product norm asks for more
//! (a [linearised](tulip_models::Linearised) forward pass), and the Tikhonov penalty for
//! the parameters themselves. Sits above `tulip-models` and below the adversarial,
//! evaluation and training crates; [`input_gradient`] and [`steepest_ascent_direction`]
//! are shared with the adversarial perturbations.
//!
//! ## In your own training loop
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use candle_nn::{Module, ModuleT, Optimizer, VarBuilder, VarMap};
//! use tulip_penalties::{LipschitzPenalty, Penalty, PenaltyInputs};
//!
//! tulip_penalties::enable_second_order_gradients(); // before any tensor work
//! let vars = VarMap::new();
//! let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
//! let fc = candle_nn::linear(4, 3, vb.pp("fc"))?;
//! let model = candle_nn::func_t(move |x, _train| fc.forward(&x.flatten_from(1)?)?.tanh());
//! let mut sgd = candle_nn::SGD::new(vars.all_vars(), 0.1)?;
//! let lipschitz = LipschitzPenalty::paper()?;
//!
//! let x = Var::from_tensor(&Tensor::rand(0f32, 1., (8, 1, 2, 2), &Device::Cpu)?)?;
//! let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &Device::Cpu)?;
//! let logits = model.forward_t(x.as_tensor(), true)?;
//! let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
//! let inputs = PenaltyInputs { model: &model, x: x.as_tensor(), labels: &labels, logits: &logits, loss: &loss };
//! let penalty = lipschitz.value(&inputs)?;
//! assert!(penalty.to_scalar::<f32>()? > 0.0);
//! sgd.backward_step(&(&loss + (penalty * 0.1)?)?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Second-order gradients
//! Candle 0.11 computes second-order gradients only if `CANDLE_GRAD_DO_NOT_DETACH=1` is set
//! before a thread's first backward pass; otherwise the *gradient* of the exact penalty is
//! silently wrong. [`enable_second_order_gradients`] sets it (`tulip train`: before any
//! tensor work, for runs with the exact penalty only, since the mode costs memory);
//! [`backward_detached`] runs a step's last backward pass without it;
//! [`LipschitzPenalty::new`] and every [`LipschitzPenalty`] evaluation run a cheap
//! cached probe with a known second derivative and fail with
//! [`PenaltyError::SecondOrderGradientsNotLive`] rather than compute a wrong gradient.
//!
//! ## Design record (choices and deviations)
//! - **1/B scaling.** The exact penalty differentiates the *batch-mean* loss, so each row of
//!   `g` carries `1/B` (the reference's behaviour; keeps `--lip` comparable with it). The
//!   finite-difference penalty's quotient measures the *unscaled* per-example norm (the
//!   normalised direction removes the scale), as in the follow-up paper.
//! - **Finite-difference form.** `½ · mean_i q_i²` — the ½ is included in the value, so
//!   the objective term is `(λ/2)·mean q²` as in docs/method.md §2; the second forward
//!   pass runs in training mode as the follow-up paper's code does. Default step
//!   `h = 0.01`.
//! - **Tikhonov scope.** [`TikhonovScope::AllTrainable`] (default) is what the reference's
//!   code does; [`TikhonovScope::WeightsOnly`] is its stated intent. Buffers never count.
//! - **Zero gradients.** The 2-norm of a zero row is 0 with a zero (not `NaN`) gradient, so
//!   the penalty of a model whose loss ignores its input is 0 and trains cleanly.
//! - **Norm variants.** Norms 1, 2, ∞ and summaries max/mean apply to both methods; for the
//!   finite difference a non-2 norm follows that norm's steepest-ascent direction (an
//!   extension; the follow-up paper uses the 2-norm).
//! - [`input_gradient`] returns *unscaled* per-example gradients (of the summed loss), and
//!   computes parameter gradients too, which Candle cannot skip.
#![warn(missing_docs)]

mod error;
mod eval_norms;
mod finite_difference;
mod gradient;
mod lipschitz;
mod norm;
mod second_order;
mod tikhonov;

pub use error::{PenaltyError, Result};
pub use eval_norms::{jacobian_norm, weight_product_norm};
pub use finite_difference::{FiniteDifferencePenalty, DEFAULT_STEP};
pub use gradient::{input_gradient, InputGradient};
pub use lipschitz::{LipschitzPenalty, PenaltyMethod, Summary};
pub use norm::{row_norms, steepest_ascent_direction, Norm};
pub use second_order::{
    backward_detached, enable_second_order_gradients, ensure_second_order_gradients,
    second_order_gradients_live, CANDLE_GRAD_DO_NOT_DETACH,
};
pub use tikhonov::{TikhonovPenalty, TikhonovScope};

use candle_core::Tensor;
use candle_nn::ModuleT;

/// Inputs a penalty may use, at the training step's clean or perturbed batch, with the model
/// in training mode.
#[derive(Clone, Copy)]
pub struct PenaltyInputs<'a> {
    /// The model.
    pub model: &'a dyn ModuleT,
    /// The batch the loss was computed on, `[B, C, H, W]`. When any penalty's
    /// [`Penalty::needs_input_graph`] is true, this must be a Candle variable
    /// (`x.is_variable()`) so that the graph from `x` to `loss` exists.
    pub x: &'a Tensor,
    /// Labels, `u32 [B]`.
    pub labels: &'a Tensor,
    /// `model.forward_t(x, true)`, `[B, classes]`.
    pub logits: &'a Tensor,
    /// Batch-mean cross-entropy of `logits`, a scalar.
    pub loss: &'a Tensor,
}

/// A term added to the training objective (with a weight chosen by the trainer).
pub trait Penalty: Send + Sync {
    /// Column name in the CSV logs (`lipschitz`, `lipschitz_fd`, `tikhonov`).
    fn name(&self) -> &'static str;

    /// Whether [`Penalty::value`] differentiates `inputs.loss` with respect to `inputs.x`,
    /// which must then be a Candle variable.
    fn needs_input_graph(&self) -> bool {
        false
    }

    /// The penalty value as a scalar tensor, differentiable with respect to the model
    /// parameters. Not multiplied by its weight.
    ///
    /// # Errors
    /// Penalty-specific (see each implementation); Candle errors on shape mismatches.
    fn value(&self, inputs: &PenaltyInputs<'_>) -> Result<Tensor>;
}
