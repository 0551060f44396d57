//! Norms reported by evaluation only (docs/method.md §2): the Jacobian norm and the weight-product
//! norm. Neither is differentiated.

use candle_core::{DType, Tensor, Var, D};
use candle_nn::ModuleT;
use tulip_models::grad_mode::frozen_parameters;
use tulip_models::Linearised;

use crate::norm::{nan_where_nan, row_norms, Norm};
use crate::{PenaltyError, Result};

/// Basis images evaluated per forward pass by [`weight_product_norm`].
const BASIS_CHUNK: usize = 256;

/// `max_i max_k ‖∂f_k(x_i)/∂x_i‖₂` over the images of `x`, with the model in evaluation mode
/// (so the examples are independent): the largest 2-norm of a row of the model's Jacobian.
/// Costs one forward pass and one backward pass per class. `NaN` if any of the gradients
/// holds a `NaN`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Module, VarBuilder, VarMap};
///
/// let vars = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vars, DType::F64, &Device::Cpu);
/// let fc = candle_nn::linear(4, 3, vb.pp("fc"))?;
/// let model = candle_nn::func_t(move |x, _| fc.forward(&x.flatten_from(1)?));
/// let x = Tensor::rand(0f64, 1., (5, 1, 2, 2), &Device::Cpu)?;
/// // An affine model's Jacobian is its weight matrix, the same at every image.
/// let j = tulip_penalties::jacobian_norm(&model, &x)?;
/// assert!(j > 0.0 && (j - tulip_penalties::jacobian_norm(&model, &(x * 0.5)?)?).abs() < 1e-12);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Fails on a shape mismatch between model and images.
pub fn jacobian_norm(model: &dyn ModuleT, x: &Tensor) -> Result<f64> {
    let xv = Var::from_tensor(&x.detach())?;
    // Input gradients only: no parameter gradient is computed for our models.
    let logits = frozen_parameters(|| model.forward_t(xv.as_tensor(), false))?;
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
/// identity ([`Linearised::forward_linearised`]) the model is affine, `f(x) = M x + b`;
/// `M` is found column by column from the `N = C·H·W` standard basis images minus `f(0)`
/// (evaluated in batches), and the largest 2-norm of a row of `M` is returned (`NaN` if a
/// row holds a `NaN`). The images are shaped, typed and placed like `input_like`, any
/// batch of inputs `[B, C, H, W]` (only its per-image shape, dtype and device are read).
///
/// Residual blocks keep their skip connection in the linearised mode (the reference's code
/// loses it, a slip; see `tulip-models`).
///
/// For a model that is affine already, the linearised model is the model:
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Module, VarBuilder, VarMap};
///
/// let vars = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vars, DType::F64, &Device::Cpu);
/// let fc = candle_nn::linear(4, 3, vb.pp("fc"))?;
/// let affine = |x: &Tensor| fc.forward(&x.flatten_from(1)?);
/// let x = Tensor::zeros((1, 1, 2, 2), DType::F64, &Device::Cpu)?;
/// let norm = tulip_penalties::weight_product_norm(&affine, &x)?;
/// // The largest row 2-norm of the layer's weight matrix.
/// let rows: Vec<f64> = fc.weight().sqr()?.sum(1)?.sqrt()?.to_vec1()?;
/// let largest = rows.iter().cloned().fold(0.0, f64::max);
/// assert!((norm - largest).abs() < 1e-12);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`PenaltyError::InvalidConfig`] unless `input_like` is a batch `[B, C, H, W]`; Candle
/// errors otherwise.
pub fn weight_product_norm(model: &dyn Linearised, input_like: &Tensor) -> Result<f64> {
    let &[_, c, h, w] = input_like.dims() else {
        return Err(PenaltyError::InvalidConfig(format!(
            "the weight-product norm needs inputs shaped [B, C, H, W], got {:?}",
            input_like.dims()
        )));
    };
    let (dtype, device) = (input_like.dtype(), input_like.device().clone());
    let n = c * h * w;
    let bias = model
        .forward_linearised(&Tensor::zeros((1, c, h, w), dtype, &device)?)?
        .detach();
    let columns = Tensor::arange(0u32, n as u32, &device)?.unsqueeze(0)?;
    let mut row_sq = Tensor::zeros(bias.dim(D::Minus1)?, DType::F64, &device)?;
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
