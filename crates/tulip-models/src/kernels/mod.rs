//! The ops the layers are built from. Each op chooses its implementation from where its
//! input lives: a CPU kernel ([`cpu`]) for a CPU tensor, else the [`portable`] one,
//! written with Candle's own ops (which run on CUDA and Metal). Layers and models call
//! these and never look at the device.
//!
//! * **Per-channel ops** over `[B, C, …]`: [`channel_affine`] (`x·a_c + s_c`, with an
//!   optional ReLU) and, inside the kernels' backward passes, sums, dots, centring and
//!   broadcasts. Candle differentiates a broadcast by summing over several non-trailing
//!   dimensions at once, which its CPU backend does element by element with index
//!   arithmetic; the kernels do it with contiguous loops.
//! * **ReLU** ([`relu`], [`add_relu`]) with one masked copy as its backward;
//!   **2×2 average pooling** ([`avg_pool2x2`]).
//! * **Convolution** ([`conv2d`]): at stride 1 on the CPU three bilinear ops closed under
//!   differentiation, run by direct SIMD kernels (`bench/RESULTS.md` has their rates
//!   against the im2col + GEMM they replaced); [`conv2d_with_statistics`] also takes
//!   the output's batch statistics, and [`conv2d_affine_relu`] fuses an evaluation-mode
//!   batch norm and ReLU into it.
//! * **Batch norm** in training mode ([`batch_norm_train`]): on the CPU one op, with its
//!   input gradient as another for the gradients of gradients.
//!
//! The CPU kernels' backward passes are built from differentiable ops (these same
//! kernels), so gradients of gradients (the exact Lipschitz penalty) work when
//! `CANDLE_GRAD_DO_NOT_DETACH=1`. Two thread-local scopes ([`grad_mode`]) let a backward
//! pass whose result is never differentiated again take shortcuts.

mod cpu;
pub mod cpu_isa;
mod force_portable;
pub mod grad_mode;
mod portable;
#[cfg(test)]
pub(crate) mod test_values;

use candle_core::{Result, Tensor};

pub(crate) use cpu::ChannelStatistics;
pub use force_portable::portable_ops;

/// Whether an op on `x` runs its CPU kernel.
fn on_cpu(x: &Tensor) -> bool {
    if force_portable::active() {
        return false;
    }
    x.device().is_cpu()
}

/// ReLU, `max(x, 0)` (0 at 0, as in PyTorch). On the CPU its backward pass is one masked
/// copy, instead of the four passes of Candle's (zeros, compare, cast, multiply).
///
/// # Errors
/// Only for dtypes other than f32 and f64 on the CPU.
pub(crate) fn relu(x: &Tensor) -> Result<Tensor> {
    if on_cpu(x) {
        cpu::relu(x)
    } else {
        portable::relu(x)
    }
}

/// `relu(x + y)` for two tensors of one shape, the end of a residual block; on the CPU
/// in one pass and one node.
///
/// # Errors
/// Fails if the shapes differ.
pub(crate) fn add_relu(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if on_cpu(x) {
        cpu::add_relu(x, y)
    } else {
        portable::add_relu(x, y)
    }
}

/// 2×2 average pooling with stride 2 on `[B, C, H, W]`, flooring odd sizes (PyTorch's
/// `AvgPool2d(2)`). On the CPU one contiguous pass whose backward pass is its adjoint,
/// itself differentiated by the pooling: Candle's strided `mean` over the window goes
/// element by element with index arithmetic, far slower.
///
/// # Errors
/// Fails on a tensor that is not 4-D.
pub(crate) fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    if on_cpu(x) {
        cpu::avg_pool2x2(x)
    } else {
        portable::avg_pool2x2(x)
    }
}

/// `x·a + s` with `a`, `s: [C]` applied along dimension 1 of `x: [B, C, …]`.
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn channel_affine(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    if on_cpu(x) {
        cpu::channel_affine(x, a, s)
    } else {
        portable::channel_affine(x, a, s)
    }
}

/// `relu(x·a_c + s_c)`, on the CPU in one pass (one node instead of two).
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn channel_affine_relu(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    if on_cpu(x) {
        cpu::channel_affine_relu(x, a, s)
    } else {
        portable::channel_affine_relu(x, a, s)
    }
}

/// `relu(x·a_c + s_c [+ skip])`: [`channel_affine_relu`], or with a residual `skip` the
/// affine map and [`add_relu`]. The unfused form of [`conv2d_affine_relu`].
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn channel_affine_add_relu(
    x: &Tensor,
    a: &Tensor,
    s: &Tensor,
    skip: Option<&Tensor>,
) -> Result<Tensor> {
    match skip {
        None => channel_affine_relu(x, a, s),
        Some(skip) => add_relu(&channel_affine(x, a, s)?, skip),
    }
}

/// Whether the CPU's stride-1 kernels can run a convolution of `x` by `w` with `padding`
/// (at most the kernel's size less one, so that the input gradient is a convolution too).
fn stride1_kernel_fits(x: &Tensor, w: &Tensor, padding: usize) -> bool {
    let kernel = w.dims().get(2..4);
    on_cpu(x) && kernel.is_some_and(|k| k.iter().all(|&k| padding < k))
}

/// 2-D convolution of `x: [B, I, H, W]` with `w: [O, I/groups, kh, kw]` (dilation 1).
/// At stride 1 on the CPU through the stride-1 kernels, whose backward pass avoids
/// Candle's slow CPU `conv_transpose2d` and stays differentiable to any order; grouped
/// ones group by group (narrow + cat, as Candle does).
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    groups: usize,
) -> Result<Tensor> {
    if stride != 1 || !stride1_kernel_fits(x, w, padding) {
        return portable::conv2d(x, w, padding, stride, groups);
    }
    if groups == 1 {
        return cpu::conv2d_s1(x, w, padding);
    }
    let (per_group_in, per_group_out) = (x.dim(1)? / groups, w.dim(0)? / groups);
    let parts = (0..groups)
        .map(|g| {
            cpu::conv2d_s1(
                &x.narrow(1, g * per_group_in, per_group_in)?,
                &w.narrow(0, g * per_group_out, per_group_out)?,
                padding,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)
}

/// A stride-1, single-group [`conv2d`], with its output's per-channel batch mean and
/// variance where the CPU kernel takes them as it writes the output (for a
/// training-mode batch norm that follows); `None` elsewhere.
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn conv2d_with_statistics(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
) -> Result<(Tensor, Option<ChannelStatistics>)> {
    if stride1_kernel_fits(x, w, padding) {
        let (y, statistics) = cpu::conv2d_s1_statistics(x, w, padding)?;
        return Ok((y, Some(statistics)));
    }
    Ok((portable::conv2d(x, w, padding, 1, 1)?, None))
}

/// `relu(conv2d(x, w)·scale_o + shift_o [+ skip])` (stride 1, one group) for `scale`,
/// `shift: [O]` and `skip` (the residual connection) of the output's shape. Where nothing
/// but `x` and `skip` can need a gradient (the kernel and coefficients are constants: a
/// frozen view, or inference), the CPU runs it as one pass over the output and one node
/// that keeps no pre-activation tensor (less memory for an input-gradient pass);
/// otherwise it is the separate ops.
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn conv2d_affine_relu(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    skip: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    if !stride1_kernel_fits(x, w, padding) {
        return portable::conv2d_affine_relu(x, w, scale, shift, skip, padding);
    }
    let constants = !(w.track_op() || scale.track_op() || shift.track_op());
    if constants {
        cpu::conv2d_affine_relu(x, w, scale, shift, skip, padding)
    } else {
        channel_affine_add_relu(&cpu::conv2d_s1(x, w, padding)?, scale, shift, skip)
    }
}

/// A training-mode batch norm's output and the batch statistics it normalised with.
pub(crate) struct TrainingBatchNorm {
    /// `(x − μ)·σ⁻¹·γ + β`, through a ReLU if asked.
    pub(crate) output: Tensor,
    /// Per-channel batch mean `μ`, `[C]`.
    pub(crate) mean: Tensor,
    /// Per-channel biased batch variance, `[C]`.
    pub(crate) variance: Tensor,
}

/// Training-mode batch norm of `x: [B, C, …]`: `y = (x − μ)·σ⁻¹·γ + β` with the batch's
/// per-channel mean `μ` and biased variance, `σ = √(var + eps)`, `affine` the `(γ, β)`
/// (none: 1 and 0), followed by a ReLU if `relu`. `statistics` are `x`'s mean and
/// variance if the caller has them (from [`conv2d_with_statistics`]); the CPU kernel
/// takes them from `x` otherwise, and the portable implementation always does.
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    statistics: Option<ChannelStatistics>,
    eps: f64,
    relu: bool,
) -> Result<TrainingBatchNorm> {
    if !on_cpu(x) {
        return portable::batch_norm_train(x, affine, eps, relu);
    }
    let channels = x.dim(1)?;
    let (mean, variance) = match statistics {
        Some(statistics) => statistics,
        None => cpu::batch_statistics(x)?,
    };
    let as_tensor = |v: &[f64]| Tensor::from_slice(v, channels, x.device())?.to_dtype(x.dtype());
    let (mean_tensor, variance_tensor) = (as_tensor(&mean)?, as_tensor(&variance)?);
    let output = match affine {
        Some((w, b)) => cpu::batch_norm_train(x, w, b, mean, &variance, eps, relu)?,
        None => {
            let ones = Tensor::ones(channels, x.dtype(), x.device())?;
            cpu::batch_norm_train(x, &ones, &ones.zeros_like()?, mean, &variance, eps, relu)?
        }
    };
    Ok(TrainingBatchNorm {
        output,
        mean: mean_tensor,
        variance: variance_tensor,
    })
}
