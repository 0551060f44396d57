//! The finite-difference input-gradient penalty of Finlay & Oberman (2019).

use candle_core::Tensor;
use tulip_models::loss::cross_entropy_per_example;

use crate::norm::{steepest_ascent_direction, Norm};
use crate::second_order::check_variable;
use crate::{Penalty, PenaltyError, PenaltyInputs, Result, Summary};

/// The step the follow-up paper used.
pub const DEFAULT_STEP: f64 = 0.01;

/// `½ · mean_i q_i²` with the difference quotient `q_i = (ℓ_i(x_i + h d_i) − ℓ_i(x_i)) / h`
/// along `d_i = g_i / ‖g_i‖₂` (detached; zero rows stay zero), `g = ∇_x L` the input gradient
/// of the batch-mean loss (docs/method.md §2, arXiv:1905.11468).
///
/// To first order `q_i ≈ ⟨∇ℓ_i, d_i⟩ = ‖∇_{x_i} ℓ_i‖₂`, the *per-example, unscaled* gradient
/// norm (no `1/B`: the normalisation of `d` removes it), so the value approximates
/// `½ · mean_i ‖∇_{x_i} ℓ_i‖²` — the squared-norm form of the follow-up paper, with its
/// factor ½ included here (the trainer's weight λ multiplies it, giving `(λ/2)·mean q²`).
/// It costs one extra backward pass (for `g`) and one extra forward pass, with no
/// second-order graph, so it does not need [`crate::enable_second_order_gradients`].
///
/// - The second forward pass at `x + h d` runs in **training mode**, as in the follow-up
///   paper's code: with batch norm it updates the running statistics once more per step,
///   and batch statistics couple the examples, so `q_i` then measures the change of `ℓ_i`
///   when the whole batch moves.
/// - Both terms of the quotient are differentiated with respect to the parameters; `d` is
///   not.
/// - Variants beyond the paper: [`FiniteDifferencePenalty::with_norm`] takes the
///   steepest-ascent direction of another norm (then `q_i ≈ ‖∇ℓ_i‖` in that norm), and
///   [`FiniteDifferencePenalty::with_summary`] the max instead of the mean of `q_i²`.
///
/// ```
/// use candle_core::{DType, Device, Tensor, Var};
/// use candle_nn::{Module, ModuleT, VarBuilder, VarMap};
/// use tulip_penalties::{FiniteDifferencePenalty, Penalty, PenaltyInputs};
///
/// let vars = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vars, DType::F64, &Device::Cpu);
/// let fc = candle_nn::linear(4, 3, vb.pp("fc"))?;
/// let model = candle_nn::func_t(move |x, _| fc.forward(&x.flatten_from(1)?));
/// let x = Var::from_tensor(&Tensor::rand(0f64, 1., (4, 1, 2, 2), &Device::Cpu)?)?;
/// let labels = Tensor::new(&[0u32, 1, 2, 0], &Device::Cpu)?;
/// let logits = model.forward_t(x.as_tensor(), true)?;
/// let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
/// let inputs = PenaltyInputs { model: &model, x: x.as_tensor(), labels: &labels, logits: &logits, loss: &loss };
/// let value = FiniteDifferencePenalty::new(1e-4)?.value(&inputs)?.to_scalar::<f64>()?;
/// // ≈ ½·mean_i ‖∇ℓ_i‖²: first-order only, no `enable_second_order_gradients` needed.
/// assert!(value > 0.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FiniteDifferencePenalty {
    h: f64,
    norm: Norm,
    summary: Summary,
}

impl Default for FiniteDifferencePenalty {
    fn default() -> Self {
        Self {
            h: DEFAULT_STEP,
            norm: Norm::L2,
            summary: Summary::Mean,
        }
    }
}

impl FiniteDifferencePenalty {
    /// A penalty with step `h` (2-norm, mean over the batch).
    ///
    /// # Errors
    /// [`PenaltyError::InvalidConfig`] unless `h` is positive and finite.
    pub fn new(h: f64) -> Result<Self> {
        if !(h.is_finite() && h > 0.0) {
            return Err(PenaltyError::InvalidConfig(format!(
                "the finite-difference step must be positive and finite, got {h}"
            )));
        }
        Ok(Self {
            h,
            ..Self::default()
        })
    }

    /// The same penalty along the steepest-ascent direction of `norm` (see
    /// [`crate::steepest_ascent_direction`]).
    pub fn with_norm(self, norm: Norm) -> Self {
        Self { norm, ..self }
    }

    /// The same penalty summarising `q_i²` over the batch by `summary`.
    pub fn with_summary(self, summary: Summary) -> Self {
        Self { summary, ..self }
    }

    /// The step `h`.
    pub fn step(&self) -> f64 {
        self.h
    }

    /// The norm whose steepest-ascent direction is followed.
    pub fn norm(&self) -> Norm {
        self.norm
    }

    /// The summary of `q_i²` over the batch.
    pub fn summary(&self) -> Summary {
        self.summary
    }
}

impl Penalty for FiniteDifferencePenalty {
    fn name(&self) -> &'static str {
        "lipschitz_fd"
    }

    fn needs_input_graph(&self) -> bool {
        true
    }

    /// # Errors
    /// [`PenaltyError::InputNotVariable`] if `inputs.x` is not a variable.
    fn value(&self, inputs: &PenaltyInputs<'_>) -> Result<Tensor> {
        check_variable(inputs.x, self.name())?;
        let x = inputs.x.detach();
        // Only the input's gradient is read, and only as a direction, never differentiated.
        let grads = tulip_models::first_order_gradients(|| {
            tulip_models::input_gradient_only(|| inputs.loss.backward())
        })?;
        let g = match grads.get(inputs.x) {
            Some(g) => g.detach(),
            None => x.zeros_like()?,
        };
        let d = steepest_ascent_direction(&g, self.norm)?;
        let shifted = (&x + (d * self.h)?)?;
        let logits = inputs.model.forward_t(&shifted, true)?;
        let after = cross_entropy_per_example(&logits, inputs.labels)?;
        let before = cross_entropy_per_example(inputs.logits, inputs.labels)?;
        let q = ((after - before)? / self.h)?;
        Ok((self.summary.apply(&q.sqr()?)? * 0.5)?)
    }
}
