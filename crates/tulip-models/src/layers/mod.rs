//! The building blocks of every architecture, each aware of the [`Mode`] it runs in.
//!
//! These are written for this crate rather than taken from candle-nn because the models
//! need three things candle-nn's layers do not give together: parameters recorded with
//! their kind (trainable or buffer) in a stable order, batch-norm running statistics that
//! live in the model's own tensors, and a linearised mode.

mod batch_norm;
mod conv;
mod linear;
mod tanh_output;

pub use batch_norm::BatchNorm;
pub use conv::{Conv2d, Conv2dConfig};
pub use linear::Linear;
pub use tanh_output::TanhOutput;

use candle_core::{Result, Tensor};

use crate::kernels;

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training: batch norm normalises by batch statistics and updates its running ones;
    /// dropout is active.
    Train,
    /// Evaluation: batch norm uses running statistics; dropout is off.
    Eval,
    /// Evaluation with every nonlinearity replaced by the identity (ReLU, the output
    /// tanh), so that the whole network is an affine map (docs/method.md §2,
    /// weight-product norm).
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
        Mode::Train | Mode::Eval => kernels::relu(x),
    }
}

/// `relu(bn(conv(x)) [+ skip])` (without batch norm `relu(conv(x) [+ skip])`; `skip` a
/// residual connection), fused as far as `mode` allows: a ReLU without `skip` into the
/// batch norm, in training the batch norm's statistics into the convolution, and in
/// evaluation mode everything into the convolution.
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
    let (bn, train) = match bn {
        Some(bn) => (bn, mode == Mode::Train),
        None => {
            let y = conv.forward(x)?;
            return match skip {
                None => relu(&y, mode),
                Some(skip) => add_relu(skip, &y, mode),
            };
        }
    };
    // In training, batch norm's statistics are taken as the convolution writes its output.
    let (y, statistics) = if train {
        conv.forward_with_statistics(x)?
    } else {
        (conv.forward(x)?, None)
    };
    match skip {
        None => bn.normalise(&y, mode, mode != Mode::Linearised, statistics),
        Some(skip) => add_relu(skip, &bn.normalise(&y, mode, false, statistics)?, mode),
    }
}

/// `relu(x + y)`, the end of a residual block, in one pass; `x + y` in linearised mode.
pub fn add_relu(x: &Tensor, y: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Linearised => x + y,
        Mode::Train | Mode::Eval => kernels::add_relu(x, y),
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
    kernels::avg_pool2x2(x)
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
    use crate::ParamBuilder;
    use candle_core::{DType, Device, Var};

    /// In training, `conv_bn_relu` hands batch norm the statistics its convolution took
    /// while writing the output: outputs, running statistics (through evaluation-mode
    /// outputs afterwards) and every gradient agree with a convolution and a batch norm
    /// applied one after the other, which compute the statistics from the output.
    #[test]
    fn conv_bn_relu_in_training_agrees_with_conv_then_batch_norm() {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            for (skip, kernel) in [(false, 3), (true, 3), (false, 1)] {
                let layers = || {
                    let pb = ParamBuilder::new(11, dtype, &dev);
                    let conv = Conv2d::new(&Conv2dConfig::same(3, 4, kernel, false), pb.pp(0));
                    let bn = BatchNorm::new(4, true, pb.pp(1));
                    (conv.unwrap(), bn.unwrap(), pb.params())
                };
                let (conv_a, bn_a, params_a) = layers();
                let (conv_b, bn_b, params_b) = layers();
                let random = |shape: &[usize], mean: f64| {
                    Tensor::randn(mean, 1.0, shape, &dev)
                        .and_then(|t| t.to_dtype(dtype))
                        .unwrap()
                };
                // A mean far from zero, so that a slip in combining the statistics shows.
                let x = Var::from_tensor(&random(&[3, 3, 6, 5], 4.0)).unwrap();
                let residual = skip.then(|| random(&[3, 4, 6, 5], 0.0));
                let r = random(&[3, 4, 6, 5], 0.0);
                let fused = conv_bn_relu(&conv_a, Some(&bn_a), &x, residual.as_ref(), Mode::Train);
                let y = conv_b.forward(&x).unwrap();
                let separate = match &residual {
                    None => bn_b.forward_relu(&y, Mode::Train),
                    Some(s) => add_relu(s, &bn_b.forward(&y, Mode::Train).unwrap(), Mode::Train),
                };
                let (fused, separate) = (fused.unwrap(), separate.unwrap());
                let case = format!("{dtype:?}, skip {skip}, {kernel}×{kernel}");
                assert!(max_abs_diff(&fused, &separate) < tol, "{case}: outputs");
                let grads = |out: &Tensor| (out * &r).unwrap().sum_all().unwrap().backward();
                let (ga, gb) = (grads(&fused).unwrap(), grads(&separate).unwrap());
                for (a, b) in params_a.all().iter().zip(params_b.all()) {
                    if let (Some(da), Some(db)) =
                        (ga.get(a.var.as_tensor()), gb.get(b.var.as_tensor()))
                    {
                        assert!(max_abs_diff(da, db) < tol * 10.0, "{case}: ∂{}", a.name);
                    }
                }
                // Both used their statistics for the running ones.
                let eval = |conv: &Conv2d, bn: &BatchNorm| {
                    conv_bn_relu(conv, Some(bn), &x, None, Mode::Eval).unwrap()
                };
                let (ea, eb) = (eval(&conv_a, &bn_a), eval(&conv_b, &bn_b));
                assert!(max_abs_diff(&ea, &eb) < tol, "{case}: running statistics");
            }
        }
    }

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
