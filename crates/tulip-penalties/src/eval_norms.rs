//! Norms reported by evaluation only (docs/method.md §2): the Jacobian norm and the weight-product
//! norm. Neither is differentiated.

use candle_core::{DType, Tensor, Var, D};
use tulip_models::{with_frozen, Classifier};

use crate::norm::{nan_where_nan, row_norms, Norm};
use crate::{PenaltyError, Result};

/// Basis images evaluated per forward pass by [`weight_product_norm`].
const BASIS_CHUNK: usize = 256;

/// `max_i max_k ‖∂f_k(x_i)/∂x_i‖₂` over the images of `x`, with the model in evaluation mode
/// (so the examples are independent): the largest 2-norm of a row of the model's Jacobian.
/// Costs one forward pass and one backward pass per class. `NaN` if any of the gradients
/// holds a `NaN`.
///
/// # Errors
/// Fails on a shape mismatch between model and images.
pub fn jacobian_norm(model: &dyn Classifier, x: &Tensor) -> Result<f64> {
    let xv = Var::from_tensor(&x.detach())?;
    // Input gradients only: through the frozen view no parameter gradient is computed.
    let logits = with_frozen(model, |m| m.forward_t(xv.as_tensor(), false))?;
    let mut best = 0f64;
    for k in 0..logits.dim(D::Minus1)? {
        let grads = logits.narrow(1, k, 1)?.sum_all()?.backward()?;
        if let Some(g) = grads.get(xv.as_tensor()) {
            let norms = row_norms(&g.detach(), Norm::L2)?;
            let n = nan_where_nan(&norms, 0, &norms.max(0)?)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if n.is_nan() {
                // `f64::max` would skip it, and a NaN gradient is no Lipschitz estimate.
                return Ok(f64::NAN);
            }
            best = best.max(n);
        }
    }
    Ok(best)
}

/// The "2,∞" norm of the linearised model (docs/method.md §2): with every nonlinearity switched to the
/// identity ([`Classifier::forward_linearised`]) the model is affine, `f(x) = M x + b`; `M`
/// is found column by column from the `N = C·H·W` standard basis images minus `f(0)`
/// (evaluated in batches), and the largest 2-norm of a row of `M` is returned (`NaN` if a
/// row holds a `NaN`).
///
/// Residual blocks keep their skip connection in the linearised mode (the reference's code
/// loses it, a slip; see `tulip-models`).
///
/// # Errors
/// [`PenaltyError::InvalidConfig`] for a model without tensors (its dtype and device are
/// unknown); Candle errors otherwise.
pub fn weight_product_norm(model: &dyn Classifier) -> Result<f64> {
    let first = model.params().all().first().ok_or_else(|| {
        PenaltyError::InvalidConfig("the model has no tensors (dtype and device unknown)".into())
    })?;
    let (dtype, device) = (first.var.dtype(), first.var.device().clone());
    let (c, h, w) = model.input_shape();
    let n = c * h * w;
    let bias = model
        .forward_linearised(&Tensor::zeros((1, c, h, w), dtype, &device)?)?
        .detach();
    let columns = Tensor::arange(0u32, n as u32, &device)?.unsqueeze(0)?;
    let mut row_sq = Tensor::zeros(model.classes(), DType::F64, &device)?;
    for start in (0..n).step_by(BASIS_CHUNK) {
        let m = BASIS_CHUNK.min(n - start);
        let which = Tensor::arange(start as u32, (start + m) as u32, &device)?.unsqueeze(1)?;
        let basis = which
            .broadcast_eq(&columns)?
            .to_dtype(dtype)?
            .reshape((m, c, h, w))?;
        // Rows of this block are columns start..start+m of M.
        let block = model
            .forward_linearised(&basis)?
            .detach()
            .broadcast_sub(&bias)?;
        row_sq = (row_sq + block.to_dtype(DType::F64)?.sqr()?.sum(0)?)?;
    }
    Ok(nan_where_nan(&row_sq, 0, &row_sq.max(0)?)?
        .sqrt()?
        .to_scalar::<f64>()?)
}
