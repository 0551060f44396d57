//! The single-step perturbations J1 (FGSM), J2 (gradient ascent) and J∞ (max-entry).

use candle_core::Tensor;
use candle_nn::ModuleT;
use tulip_penalties::{input_gradient, steepest_ascent_direction, Norm};

use crate::budget::check_non_negative;
use crate::{Perturbation, Result};

/// `x + ε·scale·d` with `d` the steepest-ascent direction of `norm` for the input gradient of
/// the loss at the clean batch, in evaluation mode.
fn gradient_step(
    model: &dyn ModuleT,
    x: &Tensor,
    labels: &Tensor,
    epsilon: f64,
    norm: Norm,
    scale: f64,
) -> Result<Tensor> {
    let x = x.detach();
    let g = input_gradient(model, &x, labels, false)?.gradient;
    let d = steepest_ascent_direction(&g, norm)?;
    Ok((x + (d * (epsilon * scale))?)?.detach())
}

fn pixels(x: &Tensor) -> Result<usize> {
    Ok(x.elem_count() / x.dim(0)?.max(1))
}

/// J1, the fast gradient sign method scaled to an L2 step: `x + ε·sign(d)/√N`, so that
/// `‖δ‖₂ = ε` (when no entry of `d` is exactly 0: `sign(0) = 0` leaves that pixel alone, as
/// `torch.sign` does in the reference). To first order it adds `ε/√N · ‖∇L‖₁` to the loss.
/// No clipping to `[0, 1]` (reference behaviour).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fgsm {
    epsilon: f64,
}

impl Fgsm {
    /// J1 with step `epsilon`.
    ///
    /// # Errors
    /// [`crate::AdversarialError::InvalidConfig`] unless `epsilon` is finite and ≥ 0.
    pub fn new(epsilon: f64) -> Result<Self> {
        check_non_negative("j1", "epsilon", epsilon)?;
        Ok(Self { epsilon })
    }
}

impl Perturbation for Fgsm {
    fn name(&self) -> &'static str {
        "j1"
    }

    fn perturb(&self, model: &dyn ModuleT, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let scale = 1.0 / (pixels(x)? as f64).sqrt();
        gradient_step(model, x, labels, self.epsilon, Norm::L1, scale)
    }
}

/// J2, one step of normalised gradient ascent: `x + ε·d/‖d‖₂` (rows with `d = 0`
/// unchanged). To first order it adds `ε · ‖∇L‖₂` to the loss. No clipping.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Module, VarBuilder, VarMap};
/// use tulip_adversarial::{GradientAscent, Perturbation};
///
/// let vars = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vars, DType::F64, &Device::Cpu);
/// let fc = candle_nn::linear(4, 3, vb.pp("fc"))?;
/// let model = candle_nn::func_t(move |x, _| fc.forward(&x.flatten_from(1)?));
/// let x = Tensor::rand(0f64, 1., (2, 1, 2, 2), &Device::Cpu)?;
/// let labels = Tensor::new(&[0u32, 2], &Device::Cpu)?;
/// let moved = GradientAscent::new(0.5)?.perturb(&model, &x, &labels)?;
/// // Each image moves by ε in the 2-norm.
/// let step = (moved - &x)?.sqr()?.sum((1, 2, 3))?.sqrt()?.to_vec1::<f64>()?;
/// assert!(step.iter().all(|s| (s - 0.5).abs() < 1e-12));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientAscent {
    epsilon: f64,
}

impl GradientAscent {
    /// J2 with step `epsilon`.
    ///
    /// # Errors
    /// [`crate::AdversarialError::InvalidConfig`] unless `epsilon` is finite and ≥ 0.
    pub fn new(epsilon: f64) -> Result<Self> {
        check_non_negative("j2", "epsilon", epsilon)?;
        Ok(Self { epsilon })
    }
}

impl Perturbation for GradientAscent {
    fn name(&self) -> &'static str {
        "j2"
    }

    fn perturb(&self, model: &dyn ModuleT, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        gradient_step(model, x, labels, self.epsilon, Norm::L2, 1.0)
    }
}

/// J∞, the max-entry step: `x + ε·sign(d_k)·e_k` with `k = argmax_j |d_j|` per image (the
/// first such index at ties; rows with `d = 0` unchanged). To first order it adds
/// `ε · ‖∇L‖_∞` to the loss. No clipping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxEntry {
    epsilon: f64,
}

impl MaxEntry {
    /// J∞ with step `epsilon`.
    ///
    /// # Errors
    /// [`crate::AdversarialError::InvalidConfig`] unless `epsilon` is finite and ≥ 0.
    pub fn new(epsilon: f64) -> Result<Self> {
        check_non_negative("jinf", "epsilon", epsilon)?;
        Ok(Self { epsilon })
    }
}

impl Perturbation for MaxEntry {
    fn name(&self) -> &'static str {
        "jinf"
    }

    fn perturb(&self, model: &dyn ModuleT, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        gradient_step(model, x, labels, self.epsilon, Norm::Linf, 1.0)
    }
}
