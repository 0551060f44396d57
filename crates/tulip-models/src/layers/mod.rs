//! The building blocks of every architecture, each aware of the [`Mode`] it runs in.
//!
//! These are written for this crate rather than taken from candle-nn because the models
//! need three things candle-nn's layers do not give together: parameters recorded with
//! their kind (trainable or buffer) in a stable order, batch-norm running statistics that
//! live in the model's own tensors, and a linearised mode.

mod batch_norm;
mod conv;
mod fast_ops;
mod linear;
mod tanh_output;

pub use batch_norm::BatchNorm;
pub use conv::{Conv2d, Conv2dConfig};
pub use fast_ops::{first_order_gradients, input_gradient_only};
pub use linear::Linear;
pub use tanh_output::TanhOutput;

use candle_core::{Result, Tensor};

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training: batch norm normalises by batch statistics and updates its running ones;
    /// dropout is active.
    Train,
    /// Evaluation: batch norm uses running statistics; dropout is off.
    Eval,
    /// Evaluation with every nonlinearity replaced by the identity (ReLU, the output
    /// tanh), so that the whole network is an affine map (SPEC §2, weight-product norm).
    Linearised,
}

impl Mode {
    /// `Train` for `true`, `Eval` for `false` (the candle-nn `ModuleT` convention).
    pub fn from_train_flag(train: bool) -> Self {
        if train {
            Mode::Train
        } else {
            Mode::Eval
        }
    }
}

/// ReLU, or the identity in linearised mode.
pub fn relu(x: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Linearised => Ok(x.clone()),
        Mode::Train | Mode::Eval => fast_ops::relu(x),
    }
}

/// `relu(bn(conv(x)) [+ skip])` (without batch norm `relu(conv(x) [+ skip])`; `skip` a
/// residual connection), fused as far as `mode` allows: a ReLU without `skip` into the
/// batch norm, and in evaluation mode everything into the convolution.
pub fn conv_bn_relu(
    conv: &Conv2d,
    bn: Option<&BatchNorm>,
    x: &Tensor,
    skip: Option<&Tensor>,
    mode: Mode,
) -> Result<Tensor> {
    if let (Some(bn), Mode::Eval) = (bn, mode) {
        let (scale, shift) = bn.eval_affine()?;
        return conv.forward_affine_relu(x, &scale, &shift, skip);
    }
    let y = conv.forward(x)?;
    match (bn, skip) {
        (Some(bn), None) => bn.forward_relu(&y, mode),
        (None, None) => relu(&y, mode),
        (Some(bn), Some(skip)) => add_relu(skip, &bn.forward(&y, mode)?, mode),
        (None, Some(skip)) => add_relu(skip, &y, mode),
    }
}

/// `relu(x + y)`, the end of a residual block, in one pass; `x + y` in linearised mode.
pub fn add_relu(x: &Tensor, y: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Linearised => x + y,
        Mode::Train | Mode::Eval => fast_ops::add_relu(x, y),
    }
}

/// Dropout with probability `p` in training mode; the identity otherwise.
pub fn dropout(x: &Tensor, p: f64, mode: Mode) -> Result<Tensor> {
    if mode == Mode::Train && p > 0.0 {
        candle_nn::ops::dropout(x, p as f32)
    } else {
        Ok(x.clone())
    }
}

/// Mean over the spatial dimensions: `[B, C, H, W] → [B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

/// 2×2 average pooling with stride 2 (floor on odd sizes, like PyTorch's `AvgPool2d(2)`).
///
/// A custom op on the CPU (one contiguous pass, differentiable to any order), not Candle's
/// `avg_pool2d`, whose backward pass is wrong on odd sizes (it spreads gradient over the
/// dropped last row/column) and slow.
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    fast_ops::avg_pool2x2(x)
}

/// Switches on Candle's second-order gradients for a layer test that differentiates a
/// gradient (this crate cannot use `tulip_penalties::enable_second_order_gradients`, which
/// depends on it). Effective on a test thread that has not run a backward pass yet.
#[cfg(test)]
pub(crate) fn second_order_on() {
    if std::env::var("CANDLE_GRAD_DO_NOT_DETACH").map_or(true, |v| v.is_empty() || v == "0") {
        std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
    }
}

/// Largest absolute entry of `a − b`, for the layer tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .and_then(|d| {
            d.abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()
        })
        .expect("tensors of the same shape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn avg_pool_floors_odd_sizes_and_its_gradient_skips_dropped_pixels() {
        // 1×1×3×3 input 0..9: the only window is the top-left 2×2 = (0+1+3+4)/4.
        let x = Var::from_vec(
            (0..9).map(f64::from).collect::<Vec<_>>(),
            (1, 1, 3, 3),
            &Device::Cpu,
        )
        .unwrap();
        let y = avg_pool2x2(x.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[1, 1, 1, 1]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            vec![2.0]
        );
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx: Vec<f64> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(gx, vec![0.25, 0.25, 0.0, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0]);
    }
}
