//! The ops written with Candle's own tensor ops, which every device runs (CUDA, Metal):
//! each op's implementation off the CPU, and the reference the CPU kernels are tested
//! against. Candle differentiates these by itself, to any order.

use candle_core::{Result, Tensor};

use super::TrainingBatchNorm;

/// Every dimension of `x` but 1 (the channels).
fn all_but_channels(x: &Tensor) -> Vec<usize> {
    (0..x.rank()).filter(|&d| d != 1).collect()
}

/// `v: [C]` shaped `[1, C, 1, …]` to broadcast along dimension 1 of `x`.
fn along_channels(v: &Tensor, x: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[1] = x.dim(1)?;
    v.reshape(shape.as_slice())
}

/// `max(x, 0)`.
pub(crate) fn relu(x: &Tensor) -> Result<Tensor> {
    x.relu()
}

/// `relu(x + y)`.
pub(crate) fn add_relu(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    (x + y)?.relu()
}

/// 2×2 average pooling with stride 2, flooring odd sizes: the even part cut out, then a
/// mean over each window.
pub(crate) fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = x.narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)?;
    x.reshape((b, c, h2, 2, w2, 2))?.mean((3, 5))
}

/// Sum over every dimension but 1: `[B, C, …] → [C]`.
pub(crate) fn channel_sum(x: &Tensor) -> Result<Tensor> {
    x.sum(all_but_channels(x).as_slice())
}

/// `Σ x·y` over every dimension but 1.
pub(crate) fn channel_dot(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    (x * y)?.sum(all_but_channels(x).as_slice())
}

/// `x·a_c + s_c` along dimension 1.
pub(crate) fn channel_affine(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&along_channels(a, x)?)?
        .broadcast_add(&along_channels(s, x)?)
}

/// `relu(x·a_c + s_c)`.
pub(crate) fn channel_affine_relu(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    channel_affine(x, a, s)?.relu()
}

/// Candle's 2-D convolution (dilation 1).
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    groups: usize,
) -> Result<Tensor> {
    x.conv2d(w, padding, stride, 1, groups)
}

/// `relu(conv2d(x, w)·scale_o + shift_o [+ skip])` as separate ops.
pub(crate) fn conv2d_affine_relu(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    skip: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let y = conv2d(x, w, padding, 1, 1)?;
    match skip {
        None => channel_affine_relu(&y, scale, shift),
        Some(skip) => add_relu(&channel_affine(&y, scale, shift)?, skip),
    }
}

/// Training-mode batch norm from the per-channel ops: two-pass statistics (the mean, then
/// the mean square of the centred values) and one scale-and-shift of the centred input.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Result<TrainingBatchNorm> {
    let n = (x.elem_count() / x.dim(1)?) as f64;
    let mean = (channel_sum(x)? / n)?;
    let ones = mean.ones_like()?;
    let centred = channel_affine(x, &ones, &mean.neg()?)?;
    let variance = (channel_dot(&centred, &centred)? / n)?;
    let inv_std = (&variance + eps)?.sqrt()?.recip()?;
    let (scale, shift) = match affine {
        Some((w, b)) => ((w * inv_std)?, b.clone()),
        None => (inv_std.clone(), inv_std.zeros_like()?),
    };
    let output = if relu {
        channel_affine_relu(&centred, &scale, &shift)?
    } else {
        channel_affine(&centred, &scale, &shift)?
    };
    Ok(TrainingBatchNorm {
        output,
        mean,
        variance,
    })
}
