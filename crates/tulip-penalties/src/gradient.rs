//! Per-example input gradients of the cross-entropy loss (first order).

use candle_core::{Tensor, Var};
use candle_nn::ModuleT;
use tulip_models::grad_mode::frozen_parameters;
use tulip_models::loss::cross_entropy_per_example;

use crate::Result;

/// What one first-order pass through the model gives: the logits, the per-example losses
/// and their input gradient, all detached.
#[derive(Debug, Clone)]
pub struct InputGradient {
    /// Logits `[B, classes]`.
    pub logits: Tensor,
    /// Per-example cross-entropy losses `ℓ_i`, `[B]`.
    pub losses: Tensor,
    /// `∇_x Σ_i ℓ_i`, of the shape of `x`.
    pub gradient: Tensor,
}

/// The logits, the per-example losses `ℓ_i` (shape `[B]`) and the input gradient
/// `∇_x Σ_i ℓ_i` (shape of `x`), whose row `i` is the *unscaled* per-example gradient
/// `∇_{x_i} ℓ_i` when the examples are independent (evaluation mode, or a model without
/// batch norm). All detached: this is the one first-order input gradient of the
/// workspace, used by the attacks, the training perturbations and the evaluation.
///
/// `train` selects the model's mode; in training mode batch norm couples the examples (and
/// updates its running statistics), so row `i` is then `Σ_j ∇_{x_i} ℓ_j`.
///
/// If the loss does not depend on the input, the gradient is zero. The forward pass runs
/// inside [`frozen_parameters`], so the models of `tulip-models` compute no parameter
/// gradient (any other `ModuleT` computes them too, and they are dropped).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Module, VarBuilder, VarMap};
///
/// // Any Candle model: here logits = W x + b on flattened 1×2×2 images.
/// let vars = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vars, DType::F64, &Device::Cpu);
/// let fc = candle_nn::linear(4, 3, vb.pp("fc"))?;
/// let model = candle_nn::func_t(move |x, _train| fc.forward(&x.flatten_from(1)?));
/// let x = Tensor::rand(0f64, 1., (2, 1, 2, 2), &Device::Cpu)?;
/// let labels = Tensor::new(&[0u32, 2], &Device::Cpu)?;
/// let g = tulip_penalties::input_gradient(&model, &x, &labels, false)?;
/// assert_eq!(g.gradient.dims(), x.dims());
/// assert_eq!(g.losses.dims(), [2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Fails on a shape mismatch between model, images and labels.
pub fn input_gradient(
    model: &dyn ModuleT,
    x: &Tensor,
    labels: &Tensor,
    train: bool,
) -> Result<InputGradient> {
    let xv = Var::from_tensor(&x.detach())?;
    let logits = frozen_parameters(|| model.forward_t(xv.as_tensor(), train))?;
    let per_example = cross_entropy_per_example(&logits, labels)?;
    // Only this pass's result is used, never differentiated again.
    let grads = tulip_models::first_order_gradients(|| per_example.sum_all()?.backward())?;
    let gradient = match grads.get(xv.as_tensor()) {
        Some(g) => g.detach(),
        None => x.zeros_like()?,
    };
    Ok(InputGradient {
        logits: logits.detach(),
        losses: per_example.detach(),
        gradient,
    })
}
