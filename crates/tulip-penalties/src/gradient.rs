//! Per-example input gradients of the cross-entropy loss (first order).

use candle_core::{Tensor, Var};
use tulip_models::loss::cross_entropy_per_example;
use tulip_models::{with_frozen, Classifier};

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
/// If the loss does not depend on the input, the gradient is zero. The pass runs through the
/// model's [frozen view](Classifier::frozen), so no parameter gradient is computed.
///
/// # Errors
/// Fails on a shape mismatch between model, images and labels.
pub fn input_gradient(
    model: &dyn Classifier,
    x: &Tensor,
    labels: &Tensor,
    train: bool,
) -> Result<InputGradient> {
    let xv = Var::from_tensor(&x.detach())?;
    let logits = with_frozen(model, |m| m.forward_t(xv.as_tensor(), train))?;
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
