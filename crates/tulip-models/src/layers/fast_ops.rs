//! Fast CPU kernels for the two hot spots of training, written as Candle custom ops whose
//! backward passes are themselves built from differentiable ops (these same custom ops),
//! so that gradients of gradients (the exact Lipschitz penalty) keep working when
//! `CANDLE_GRAD_DO_NOT_DETACH=1`.
//!
//! * **Per-channel ops** over `[B, C, …]`: [`channel_sum`] (sum over every dimension but
//!   1), [`channel_expand`] (its adjoint: broadcast a `[C]` vector) and [`channel_affine`]
//!   (`x·a_c + b_c`). Candle differentiates a broadcast by summing over several
//!   non-trailing dimensions at once, which its CPU backend does element by element with
//!   index arithmetic (~20 ms for a 128×16×28×28 tensor); these do it with contiguous
//!   loops.
//! * **Stride-1 convolution** as a family of three bilinear ops closed under
//!   differentiation: the convolution `F(x, w)`, its input gradient `Gx(g, w)` (a
//!   convolution with the transposed, flipped kernel) and its weight gradient `Gw(x, g)`.
//!   With `⟨F(x,w), g⟩ = ⟨x, Gx(g,w)⟩ = ⟨w, Gw(x,g)⟩` each one's derivatives are the other
//!   two, so Candle's slow CPU `conv_transpose2d` is never used. All three run as direct
//!   SIMD kernels (`direct_conv`), 2-3x faster at the ResNet sizes than the im2col + GEMM
//!   they replaced.
//!
//! Only the CPU has kernels; callers fall back to Candle's ops on other devices.

mod batch_norm;
mod direct_conv;

use std::borrow::Cow;
use std::cell::Cell;
use std::thread::LocalKey;

pub(super) use batch_norm::{batch_norm_train, batch_statistics};

use direct_conv::Isa;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType,
};

// ---------------------------------------------------------------------------------------
// first-order mode

thread_local! {
    static FIRST_ORDER_ONLY: Cell<bool> = const { Cell::new(false) };
    static INPUT_GRADIENT_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with `flag` set on this thread, restoring it afterwards (also on a panic).
fn with_flag<R>(flag: &'static LocalKey<Cell<bool>>, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|c| c.replace(true)));
    f()
}

/// Runs `f` with the gradients of this crate's ops free to be plain tensors that cannot be
/// differentiated again: where it helps (batch norm), their backward passes then use a
/// fused kernel instead of a composition of differentiable ops. For backward passes
/// whose result is only used, never differentiated (a training step's parameter
/// gradients, an attack's input gradient). Applies to this thread only.
pub fn first_order_gradients<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&FIRST_ORDER_ONLY, f)
}

pub(super) fn first_order_only() -> bool {
    FIRST_ORDER_ONLY.with(Cell::get)
}

/// Runs `f` with backward passes that compute no gradient for convolution kernels (the
/// [`GradStore`](candle_core::backprop::GradStore) then has none for them): for a pass
/// whose only use is the input's gradient, such as the Lipschitz penalties' inner
/// pass, this skips a third of its convolution work, and, with second-order gradients
/// on, the graph of it. Kernels are assumed not to depend on the input, as in every
/// model here. Applies to this thread only.
pub fn input_gradient_only<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&INPUT_GRADIENT_ONLY, f)
}

fn kernel_gradients_wanted() -> bool {
    !INPUT_GRADIENT_ONLY.with(Cell::get)
}

// ---------------------------------------------------------------------------------------
// helpers

/// The elements of a storage in row-major order of `l`, borrowed when already contiguous.
fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [T]>> {
    let data = T::cpu_storage_as_slice(s)?;
    if let Some((a, b)) = l.contiguous_offsets() {
        return Ok(Cow::Borrowed(&data[a..b]));
    }
    let dims = l.dims();
    let strides = l.stride();
    let n = l.shape().elem_count();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(Cow::Owned(out));
    }
    let rank = dims.len();
    if rank == 0 {
        out.push(data[l.start_offset()]);
        return Ok(Cow::Owned(out));
    }
    let (last_d, last_s) = (dims[rank - 1], strides[rank - 1]);
    let mut idx = vec![0usize; rank];
    let mut off = l.start_offset();
    loop {
        out.extend((0..last_d).map(|i| data[off + i * last_s]));
        let mut r = rank - 1;
        loop {
            if r == 0 {
                return Ok(Cow::Owned(out));
            }
            r -= 1;
            idx[r] += 1;
            off += strides[r];
            if idx[r] < dims[r] {
                break;
            }
            off -= strides[r] * dims[r];
            idx[r] = 0;
        }
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
}

/// `[B, C, S]` view of a `[B, C, …]` shape.
fn bcs(dims: &[usize]) -> Result<(usize, usize, usize)> {
    if dims.len() < 2 {
        bail!("per-channel op needs a [B, C, …] tensor, got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

macro_rules! float_dispatch {
    ($s:expr, $f:ident ( $($arg:expr),* )) => {
        match $s {
            CpuStorage::F32(_) => $f::<f32>($($arg),*),
            CpuStorage::F64(_) => $f::<f64>($($arg),*),
            _ => bail!("fast_ops: only f32 and f64 are supported"),
        }
    };
}

// ---------------------------------------------------------------------------------------
// per-channel ops

/// Sum over every dimension but 1: `[B, C, …] → [C]`.
struct ChannelSum;

/// `Σ v` with eight independent accumulators (so it vectorises), returned in f64.
fn block_sum<T: WithDType>(v: &[T]) -> f64 {
    let zero = T::from_f64(0.0);
    let mut acc = [zero; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += x;
        }
    }
    let mut tail = zero;
    for &x in rest {
        tail += x;
    }
    acc.iter().map(|a| a.to_f64()).sum::<f64>() + tail.to_f64()
}

/// `Σ u·v` with eight independent accumulators, returned in f64.
fn block_dot<T: WithDType>(u: &[T], v: &[T]) -> f64 {
    let zero = T::from_f64(0.0);
    let mut acc = [zero; 8];
    let (cu, cv) = (u.chunks_exact(8), v.chunks_exact(8));
    let (ru, rv) = (cu.remainder(), cv.remainder());
    for (a8, b8) in cu.zip(cv) {
        for ((a, &x), &y) in acc.iter_mut().zip(a8).zip(b8) {
            *a += x * y;
        }
    }
    let mut tail = zero;
    for (&x, &y) in ru.iter().zip(rv) {
        tail += x * y;
    }
    acc.iter().map(|a| a.to_f64()).sum::<f64>() + tail.to_f64()
}

fn channel_sum_cpu<T: WithDType>(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let (b, c, sz) = bcs(l.dims())?;
    let x = contiguous::<T>(s, l)?;
    let mut acc = vec![0f64; c];
    for bi in 0..b {
        for (ci, a) in acc.iter_mut().enumerate() {
            let start = (bi * c + ci) * sz;
            *a += block_sum(&x[start..start + sz]);
        }
    }
    let out: Vec<T> = acc.into_iter().map(T::from_f64).collect();
    Ok((T::to_cpu_storage_owned(out), Shape::from(c)))
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "tulip-channel-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s, channel_sum_cpu(s, l))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(channel_expand(grad, arg.dims())?))
    }
}

/// `Σ x·y` over every dimension but 1: `[B, C, …]² → [C]` (no full-size temporary).
struct ChannelDot;

fn channel_dot_cpu<T: WithDType>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    if l1.dims() != l2.dims() {
        bail!(
            "channel_dot: shapes {:?} and {:?} differ",
            l1.dims(),
            l2.dims()
        );
    }
    let (b, c, sz) = bcs(l1.dims())?;
    let x = contiguous::<T>(s1, l1)?;
    let y = contiguous::<T>(s2, l2)?;
    let mut acc = vec![0f64; c];
    for bi in 0..b {
        for (ci, a) in acc.iter_mut().enumerate() {
            let start = (bi * c + ci) * sz;
            *a += block_dot(&x[start..start + sz], &y[start..start + sz]);
        }
    }
    let out: Vec<T> = acc.into_iter().map(T::from_f64).collect();
    Ok((T::to_cpu_storage_owned(out), Shape::from(c)))
}

impl CustomOp2 for ChannelDot {
    fn name(&self) -> &'static str {
        "tulip-channel-dot"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s1, channel_dot_cpu(s1, l1, s2, l2))
    }
    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let zero = grad.zeros_like()?;
        let dx = x
            .track_op()
            .then(|| channel_affine(y, grad, &zero))
            .transpose()?;
        let dy = y
            .track_op()
            .then(|| channel_affine(x, grad, &zero))
            .transpose()?;
        Ok((dx, dy))
    }
}

/// Broadcasts a `[C]` vector to `[B, C, …]` (materialised).
struct ChannelExpand(Vec<usize>);

fn channel_expand_cpu<T: WithDType>(
    dims: &[usize],
    s: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (b, c, sz) = bcs(dims)?;
    let v = contiguous::<T>(s, l)?;
    if v.len() != c {
        bail!("channel_expand: {} values for {c} channels", v.len());
    }
    let mut out = Vec::with_capacity(b * c * sz);
    for _ in 0..b {
        for &vc in v.iter() {
            out.extend(std::iter::repeat_n(vc, sz));
        }
    }
    Ok((T::to_cpu_storage_owned(out), Shape::from(dims.to_vec())))
}

impl CustomOp1 for ChannelExpand {
    fn name(&self) -> &'static str {
        "tulip-channel-expand"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s, channel_expand_cpu(&self.0, s, l))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(channel_sum(grad)?))
    }
}

/// `y[b, c, …] = x[b, c, …] · a[c] + s[c]`, followed by a ReLU if `relu`.
struct ChannelAffine {
    relu: bool,
}

fn channel_affine_cpu<T: WithDType>(
    op: &ChannelAffine,
    xs: &CpuStorage,
    xl: &Layout,
    as_: &CpuStorage,
    al: &Layout,
    ss: &CpuStorage,
    sl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (b, c, sz) = bcs(xl.dims())?;
    let x = contiguous::<T>(xs, xl)?;
    let a = contiguous::<T>(as_, al)?;
    let s = contiguous::<T>(ss, sl)?;
    if a.len() != c || s.len() != c {
        bail!(
            "channel_affine: scale/shift of {}/{} for {c} channels",
            a.len(),
            s.len()
        );
    }
    let mut out = Vec::with_capacity(b * c * sz);
    let zero = T::from_f64(0.0);
    for bi in 0..b {
        for ci in 0..c {
            let (ac, sc) = (a[ci], s[ci]);
            let plane = x[(bi * c + ci) * sz..][..sz].iter();
            if op.relu {
                out.extend(
                    plane
                        .map(|&v| v * ac + sc)
                        .map(|v| if v > zero { v } else { zero }),
                );
            } else {
                out.extend(plane.map(|&v| v * ac + sc));
            }
        }
    }
    Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "tulip-channel-affine"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s1, channel_affine_cpu(self, s1, l1, s2, l2, s3, l3))
    }
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        s: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // After a ReLU the output is positive exactly where its input was.
        let masked;
        let grad = if self.relu {
            masked = relu_mask(grad, res)?;
            &masked
        } else {
            grad
        };
        let dx = if x.track_op() {
            Some(channel_affine(grad, a, &a.zeros_like()?)?)
        } else {
            None
        };
        let da = if a.track_op() {
            Some(channel_dot(grad, x)?)
        } else {
            None
        };
        let ds = if s.track_op() {
            Some(channel_sum(grad)?)
        } else {
            None
        };
        Ok((dx, da, ds))
    }
}

/// `max(x, 0)`.
struct Relu;

fn relu_cpu<T: WithDType>(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let x = contiguous::<T>(s, l)?;
    let zero = T::from_f64(0.0);
    let out: Vec<T> = x.iter().map(|&v| if v > zero { v } else { zero }).collect();
    Ok((T::to_cpu_storage_owned(out), l.shape().clone()))
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "tulip-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s, relu_cpu(s, l))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(relu_mask(grad, arg)?))
    }
}

/// `g · [x > 0]`: the gradient of ReLU at `x` applied to `g`.
struct ReluMask;

fn relu_mask_cpu<T: WithDType>(
    gs: &CpuStorage,
    gl: &Layout,
    xs: &CpuStorage,
    xl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    if gl.dims() != xl.dims() {
        bail!(
            "relu_mask: gradient {:?} and input {:?} differ",
            gl.dims(),
            xl.dims()
        );
    }
    let g = contiguous::<T>(gs, gl)?;
    let x = contiguous::<T>(xs, xl)?;
    let zero = T::from_f64(0.0);
    let out: Vec<T> = g
        .iter()
        .zip(x.iter())
        .map(|(&gv, &xv)| if xv > zero { gv } else { zero })
        .collect();
    Ok((T::to_cpu_storage_owned(out), gl.shape().clone()))
}

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "tulip-relu-mask"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s1, relu_mask_cpu(s1, l1, s2, l2))
    }
    /// Linear in `g`, piecewise constant in `x` (zero derivative almost everywhere, as in
    /// Candle and PyTorch), so only `g` gets a gradient.
    fn bwd(
        &self,
        g: &Tensor,
        x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((g.track_op().then(|| relu_mask(grad, x)).transpose()?, None))
    }
}

/// ReLU whose backward pass is one masked copy, `g · [x > 0]` (PyTorch's convention at 0),
/// instead of the four passes of Candle's (zeros, compare, cast, multiply); differentiable
/// to any order. Other devices use Candle's `relu`.
///
/// # Errors
/// Only for dtypes other than f32 and f64.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.relu();
    }
    x.apply_op1(Relu)
}

fn relu_mask(g: &Tensor, x: &Tensor) -> Result<Tensor> {
    g.apply_op2(x, ReluMask)
}

/// `relu(x + y)` for two tensors of one shape.
struct AddRelu;

fn add_relu_cpu<T: WithDType>(
    xs: &CpuStorage,
    xl: &Layout,
    ys: &CpuStorage,
    yl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    if xl.dims() != yl.dims() {
        bail!(
            "add_relu: shapes {:?} and {:?} differ",
            xl.dims(),
            yl.dims()
        );
    }
    let (x, y) = (contiguous::<T>(xs, xl)?, contiguous::<T>(ys, yl)?);
    let zero = T::from_f64(0.0);
    let out: Vec<T> = x
        .iter()
        .zip(y.iter())
        .map(|(&a, &b)| a + b)
        .map(|v| if v > zero { v } else { zero })
        .collect();
    Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "tulip-add-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s1, add_relu_cpu(s1, l1, s2, l2))
    }
    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = relu_mask(grad, res)?;
        Ok((x.track_op().then(|| g.clone()), y.track_op().then_some(g)))
    }
}

/// `relu(x + y)` in one pass (one node instead of two), the end of a residual block;
/// differentiable to any order. Other devices use Candle's ops.
///
/// # Errors
/// Fails if the shapes differ.
pub fn add_relu(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return (x + y)?.relu();
    }
    x.apply_op2(y, AddRelu)
}

/// 2×2 average pooling with stride 2, flooring odd sizes: `[B, C, H, W] → [B, C, H/2, W/2]`.
struct AvgPool2;

fn avg_pool2_cpu<T: WithDType>(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let (b, c, h, w) = l.shape().dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = contiguous::<T>(s, l)?;
    let quarter = T::from_f64(0.25);
    let mut out = Vec::with_capacity(b * c * h2 * w2);
    for plane in x.chunks_exact(h * w) {
        for i in 0..h2 {
            let (r0, r1) = (&plane[2 * i * w..][..w], &plane[(2 * i + 1) * w..][..w]);
            out.extend(
                (0..w2).map(|j| (r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1]) * quarter),
            );
        }
    }
    Ok((T::to_cpu_storage_owned(out), Shape::from((b, c, h2, w2))))
}

impl CustomOp1 for AvgPool2 {
    fn name(&self) -> &'static str {
        "tulip-avg-pool-2x2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s, avg_pool2_cpu(s, l))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        Ok(Some(grad.apply_op1(AvgPool2Adjoint { h, w })?))
    }
}

/// The adjoint of [`AvgPool2`] for an `h × w` input: each value spread as a quarter over
/// its 2×2 window, zeros on a row or column that pooling dropped.
struct AvgPool2Adjoint {
    h: usize,
    w: usize,
}

fn avg_pool2_adjoint_cpu<T: WithDType>(
    op: &AvgPool2Adjoint,
    s: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (b, c, h2, w2) = l.shape().dims4()?;
    let (h, w) = (op.h, op.w);
    if h / 2 != h2 || w / 2 != w2 {
        bail!("avg-pool adjoint: {h2}×{w2} is not the pooled size of {h}×{w}");
    }
    let g = contiguous::<T>(s, l)?;
    let (zero, quarter) = (T::from_f64(0.0), T::from_f64(0.25));
    let mut out = Vec::with_capacity(b * c * h * w);
    for plane in g.chunks_exact(h2 * w2) {
        for r in 0..h {
            if r / 2 < h2 {
                let row = &plane[(r / 2) * w2..][..w2];
                out.extend(row.iter().flat_map(|&v| [v * quarter; 2]));
                out.extend(std::iter::repeat_n(zero, w - 2 * w2));
            } else {
                out.extend(std::iter::repeat_n(zero, w));
            }
        }
    }
    Ok((T::to_cpu_storage_owned(out), Shape::from((b, c, h, w))))
}

impl CustomOp1 for AvgPool2Adjoint {
    fn name(&self) -> &'static str {
        "tulip-avg-pool-2x2-adjoint"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s, avg_pool2_adjoint_cpu(self, s, l))
    }
    /// Linear, and the adjoint of the pooling: its own adjoint is the pooling.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.apply_op1(AvgPool2)?))
    }
}

/// 2×2 average pooling with stride 2 on `[B, C, H, W]`, flooring odd sizes (PyTorch's
/// `AvgPool2d(2)`), in one contiguous pass; its backward pass is its adjoint (a quarter of
/// the gradient on each pixel of the window), whose own backward is the pooling, so it is
/// differentiable to any order. Candle's strided `mean` over the window took one to two
/// orders of magnitude longer. Other devices use `reshape` + `mean`.
///
/// # Errors
/// Fails on a tensor that is not 4-D.
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !x.device().is_cpu() {
        let (h2, w2) = (h / 2, w / 2);
        let x = x.narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)?;
        return x.reshape((b, c, h2, 2, w2, 2))?.mean((3, 5));
    }
    x.apply_op1(AvgPool2)
}

/// Sum of `x: [B, C, …]` over every dimension but 1, as `[C]`; differentiable to any order.
///
/// # Errors
/// Fails on a tensor of rank below 2.
pub fn channel_sum(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.apply_op1(ChannelSum)
    } else {
        let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        x.sum(dims.as_slice())
    }
}

/// `Σ x·y` of two `[B, C, …]` tensors over every dimension but 1, as `[C]`, without a
/// full-size temporary; differentiable to any order.
///
/// # Errors
/// Fails if the shapes differ or have rank below 2.
pub fn channel_dot(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.apply_op2(y, ChannelDot)
    } else {
        let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        (x * y)?.sum(dims.as_slice())
    }
}

/// Broadcasts `v: [C]` to `dims = [B, C, …]`; differentiable to any order.
///
/// # Errors
/// Fails if `v` does not have `dims[1]` elements.
pub fn channel_expand(v: &Tensor, dims: &[usize]) -> Result<Tensor> {
    if v.device().is_cpu() {
        v.apply_op1(ChannelExpand(dims.to_vec()))
    } else {
        let mut shape = vec![1; dims.len()];
        shape[1] = dims[1];
        v.reshape(shape)?.broadcast_as(dims)?.contiguous()
    }
}

/// `x·a + s` with `a`, `s: [C]` applied along dimension 1 of `x: [B, C, …]`;
/// differentiable to any order.
///
/// # Errors
/// Fails on a shape mismatch.
pub fn channel_affine(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.apply_op3(a, s, ChannelAffine { relu: false })
    } else {
        let mut shape = vec![1; x.rank()];
        shape[1] = x.dim(1)?;
        x.broadcast_mul(&a.reshape(shape.as_slice())?)?
            .broadcast_add(&s.reshape(shape.as_slice())?)
    }
}

/// `z[b, c, …] = u[b, c, …]·k[0, c] + v[b, c, …]·k[1, c] + k[2, c]` for two tensors of one
/// shape and `k: [3, C]`.
struct ChannelAffine2;

fn channel_affine2_cpu<T: WithDType>(
    (us, ul): (&CpuStorage, &Layout),
    (vs, vl): (&CpuStorage, &Layout),
    (ks, kl): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (b, c, sz) = bcs(ul.dims())?;
    if ul.dims() != vl.dims() || kl.dims() != [3, c] {
        bail!(
            "channel_affine2: shapes {:?}, {:?} and coefficients {:?}",
            ul.dims(),
            vl.dims(),
            kl.dims()
        );
    }
    let (u, v, k) = (
        contiguous::<T>(us, ul)?,
        contiguous::<T>(vs, vl)?,
        contiguous::<T>(ks, kl)?,
    );
    let mut out = Vec::with_capacity(b * c * sz);
    for (i, (up, vp)) in u
        .chunks_exact(sz.max(1))
        .zip(v.chunks_exact(sz.max(1)))
        .enumerate()
    {
        let ci = i % c;
        let (p, q, r) = (k[ci], k[c + ci], k[2 * c + ci]);
        out.extend(up.iter().zip(vp).map(|(&a, &b)| a * p + b * q + r));
    }
    Ok((T::to_cpu_storage_owned(out), ul.shape().clone()))
}

impl CustomOp3 for ChannelAffine2 {
    fn name(&self) -> &'static str {
        "tulip-channel-affine2"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s1, channel_affine2_cpu((s1, l1), (s2, l2), (s3, l3)))
    }
    fn bwd(
        &self,
        u: &Tensor,
        v: &Tensor,
        k: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let zero = k.get(2)?.zeros_like()?;
        let du = u
            .track_op()
            .then(|| channel_affine(grad, &k.get(0)?, &zero))
            .transpose()?;
        let dv = v
            .track_op()
            .then(|| channel_affine(grad, &k.get(1)?, &zero))
            .transpose()?;
        let dk = k
            .track_op()
            .then(|| {
                let parts = [
                    channel_dot(grad, u)?,
                    channel_dot(grad, v)?,
                    channel_sum(grad)?,
                ];
                Tensor::stack(&parts, 0)
            })
            .transpose()?;
        Ok((du, dv, dk))
    }
}

/// `u·p_c + v·q_c + r_c` in one pass (`p, q, r: [C]`), differentiable to any order. Other
/// devices use Candle's ops.
///
/// # Errors
/// Fails on a shape mismatch.
pub fn channel_affine2(
    u: &Tensor,
    v: &Tensor,
    p: &Tensor,
    q: &Tensor,
    r: &Tensor,
) -> Result<Tensor> {
    if u.device().is_cpu() {
        u.apply_op3(v, &Tensor::stack(&[p, q, r], 0)?, ChannelAffine2)
    } else {
        channel_affine(u, p, r)? + channel_affine(v, q, &r.zeros_like()?)?
    }
}

/// `relu(x·a_c + s_c)` in one pass (one node instead of two); differentiable to any
/// order. Other devices use Candle's ops.
///
/// # Errors
/// Fails on a shape mismatch.
pub fn channel_affine_relu(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.apply_op3(a, s, ChannelAffine { relu: true })
    } else {
        channel_affine(x, a, s)?.relu()
    }
}

// ---------------------------------------------------------------------------------------
// stride-1 convolution

/// The shape of a stride-1 convolution: `b` images of `c × h × w`, a `kh × kw` kernel,
/// zero padding `(ph, pw)` on each side.
#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ph: usize,
    pw: usize,
}

impl ConvGeom {
    fn ho(&self) -> usize {
        self.h + 2 * self.ph + 1 - self.kh
    }
    fn wo(&self) -> usize {
        self.w + 2 * self.pw + 1 - self.kw
    }
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvKind {
    /// `(x, w) ↦ conv(x, w)`.
    Forward,
    /// `(g, w) ↦ ∂⟨conv(x, w), g⟩/∂x`.
    GradInput,
    /// `(x, g) ↦ ∂⟨conv(x, w), g⟩/∂w`.
    GradWeight,
}

#[derive(Debug, Clone, Copy)]
struct ConvS1 {
    kind: ConvKind,
    padding: usize,
}

fn conv_s1_cpu<T: WithDType + direct_conv::Lane>(
    op: &ConvS1,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let a = contiguous::<T>(s1, l1)?;
    let bt = contiguous::<T>(s2, l2)?;
    let (d1, d2) = (l1.dims(), l2.dims());
    if d1.len() != 4 || d2.len() != 4 {
        bail!("conv: 4-D tensors expected, got {d1:?} and {d2:?}");
    }
    let p = op.padding;
    match op.kind {
        ConvKind::Forward => {
            let (o, c, kh, kw) = (d2[0], d2[1], d2[2], d2[3]);
            if d1[1] != c || d1[2] + 2 * p < kh || d1[3] + 2 * p < kw {
                bail!("conv: input {d1:?} and kernel {d2:?} do not match (padding {p})");
            }
            let g = ConvGeom {
                b: d1[0],
                c,
                h: d1[2],
                w: d1[3],
                kh,
                kw,
                ph: p,
                pw: p,
            };
            let y = direct_conv::conv(Isa::Best, &a, &g, &bt, o);
            Ok((
                T::to_cpu_storage_owned(y),
                Shape::from((g.b, o, g.ho(), g.wo())),
            ))
        }
        ConvKind::GradInput => {
            // F(g, w̃) with w̃[c, o, i, j] = w[o, c, kh-1-i, kw-1-j], padding k-1-p.
            let (o, c, kh, kw) = (d2[0], d2[1], d2[2], d2[3]);
            if d1[1] != o || p + 1 > kh || p + 1 > kw {
                bail!("conv grad-input: {d1:?} and kernel {d2:?} do not match (padding {p})");
            }
            let mut wf = Vec::with_capacity(o * c * kh * kw);
            for ci in 0..c {
                for oo in 0..o {
                    for i in 0..kh {
                        for j in 0..kw {
                            wf.push(bt[((oo * c + ci) * kh + kh - 1 - i) * kw + kw - 1 - j]);
                        }
                    }
                }
            }
            let g = ConvGeom {
                b: d1[0],
                c: o,
                h: d1[2],
                w: d1[3],
                kh,
                kw,
                ph: kh - 1 - p,
                pw: kw - 1 - p,
            };
            let y = direct_conv::conv(Isa::Best, &a, &g, &wf, c);
            Ok((
                T::to_cpu_storage_owned(y),
                Shape::from((g.b, c, g.ho(), g.wo())),
            ))
        }
        ConvKind::GradWeight => {
            let (b, c, h, w) = (d1[0], d1[1], d1[2], d1[3]);
            let (o, ho, wo) = (d2[1], d2[2], d2[3]);
            if d2[0] != b || ho > h + 2 * p || wo > w + 2 * p {
                bail!("conv grad-weight: input {d1:?} and gradient {d2:?} do not match");
            }
            let (kh, kw) = (h + 2 * p + 1 - ho, w + 2 * p + 1 - wo);
            let g = ConvGeom {
                b,
                c,
                h,
                w,
                kh,
                kw,
                ph: p,
                pw: p,
            };
            let y = direct_conv::grad_weight(Isa::Best, &a, &g, &bt, o);
            Ok((T::to_cpu_storage_owned(y), Shape::from((o, c, kh, kw))))
        }
    }
}

impl CustomOp2 for ConvS1 {
    fn name(&self) -> &'static str {
        match self.kind {
            ConvKind::Forward => "tulip-conv2d-s1",
            ConvKind::GradInput => "tulip-conv2d-s1-grad-input",
            ConvKind::GradWeight => "tulip-conv2d-s1-grad-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s1, conv_s1_cpu(self, s1, l1, s2, l2))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let p = self.padding;
        let (d1, d2) = match self.kind {
            // ⟨F(x,w), r⟩: ∂x = Gx(r, w), ∂w = Gw(x, r)
            ConvKind::Forward => (
                arg1.track_op().then(|| conv2d_grad_input(grad, arg2, p)),
                (arg2.track_op() && kernel_gradients_wanted())
                    .then(|| conv2d_grad_weight(arg1, grad, p)),
            ),
            // ⟨Gx(g,w), r⟩ = ⟨g, F(r,w)⟩ = ⟨w, Gw(r,g)⟩
            ConvKind::GradInput => (
                arg1.track_op().then(|| conv2d_s1(grad, arg2, p)),
                arg2.track_op().then(|| conv2d_grad_weight(grad, arg1, p)),
            ),
            // ⟨Gw(x,g), r⟩ = ⟨x, Gx(g,r)⟩ = ⟨g, F(x,r)⟩
            ConvKind::GradWeight => (
                arg1.track_op().then(|| conv2d_grad_input(arg2, grad, p)),
                arg2.track_op().then(|| conv2d_s1(arg1, grad, p)),
            ),
        };
        Ok((d1.transpose()?, d2.transpose()?))
    }
}

/// Stride-1, dilation-1, single-group 2-D convolution of `x: [B, C, H, W]` with
/// `w: [O, C, kh, kw]` and zero padding `padding ≤ k - 1` on every side; equal to
/// `x.conv2d(w, padding, 1, 1, 1)` and differentiable to any order without
/// `conv_transpose2d`.
///
/// # Errors
/// Fails on a shape mismatch.
pub fn conv2d_s1(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.conv2d(w, padding, 1, 1, 1);
    }
    x.apply_op2(
        w,
        ConvS1 {
            kind: ConvKind::Forward,
            padding,
        },
    )
}

/// The input gradient of [`conv2d_s1`]: `g: [B, O, H', W']`, `w: [O, C, kh, kw]` →
/// `[B, C, H, W]`.
fn conv2d_grad_input(g: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    g.apply_op2(
        w,
        ConvS1 {
            kind: ConvKind::GradInput,
            padding,
        },
    )
}

/// The weight gradient of [`conv2d_s1`]: `x: [B, C, H, W]`, `g: [B, O, H', W']` →
/// `[O, C, kh, kw]`.
fn conv2d_grad_weight(x: &Tensor, g: &Tensor, padding: usize) -> Result<Tensor> {
    x.apply_op2(
        g,
        ConvS1 {
            kind: ConvKind::GradWeight,
            padding,
        },
    )
}

/// `relu(conv(x, w)·scale_o + shift_o)`: a convolution, evaluation-mode batch norm and ReLU
/// as one op, for a kernel and coefficients that are constants.
#[derive(Debug, Clone, Copy)]
struct ConvAffineRelu {
    padding: usize,
}

fn conv_affine_relu_cpu<T: WithDType + direct_conv::Lane>(
    op: &ConvAffineRelu,
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    (ks, kl): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (d1, d2) = (xl.dims(), wl.dims());
    let p = op.padding;
    if d1.len() != 4 || d2.len() != 4 || d1[1] != d2[1] || kl.dims() != [2, d2[0]] {
        bail!(
            "conv_affine_relu: input {d1:?}, kernel {d2:?}, coefficients {:?}",
            kl.dims()
        );
    }
    let (o, c, kh, kw) = (d2[0], d2[1], d2[2], d2[3]);
    if d1[2] + 2 * p < kh || d1[3] + 2 * p < kw {
        bail!("conv_affine_relu: input {d1:?} smaller than kernel {d2:?} (padding {p})");
    }
    let g = ConvGeom {
        b: d1[0],
        c,
        h: d1[2],
        w: d1[3],
        kh,
        kw,
        ph: p,
        pw: p,
    };
    let (x, w, k) = (
        contiguous::<T>(xs, xl)?,
        contiguous::<T>(ws, wl)?,
        contiguous::<T>(ks, kl)?,
    );
    let epilogue = direct_conv::AffineRelu {
        scale: &k[..o],
        shift: &k[o..],
    };
    let y = direct_conv::conv_then(Isa::Best, &x, &g, &w, o, Some(epilogue));
    Ok((
        T::to_cpu_storage_owned(y),
        Shape::from((g.b, o, g.ho(), g.wo())),
    ))
}

impl CustomOp3 for ConvAffineRelu {
    fn name(&self) -> &'static str {
        "tulip-conv2d-affine-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s1, conv_affine_relu_cpu(self, (s1, l1), (s2, l2), (s3, l3)))
    }

    /// Only `x` has a gradient ([`conv2d_affine_relu`] builds this op only for constant
    /// kernels and coefficients): `Gx(scale · g·[y > 0], w)`, built from differentiable ops.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        k: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if w.track_op() || k.track_op() {
            bail!("conv_affine_relu: the kernel and coefficients must be constants");
        }
        let scale = k.get(0)?;
        let masked = channel_affine(&relu_mask(grad, res)?, &scale, &scale.zeros_like()?)?;
        let dx = x
            .track_op()
            .then(|| conv2d_grad_input(&masked, w, self.padding))
            .transpose()?;
        Ok((dx, None, None))
    }
}

/// `relu(conv2d_s1(x, w, padding)·scale_o + shift_o)` for `scale`, `shift: [O]`: a
/// convolution, evaluation-mode batch norm and ReLU in one pass over the output, and one
/// node that keeps no pre-activation tensor (half the memory of an input-gradient pass).
/// The fused op is used where nothing but `x` can need a gradient (the kernel and
/// coefficients are constants: a frozen view, or inference); otherwise, and on other
/// devices, this is the three ops.
///
/// # Errors
/// Fails on a shape mismatch.
pub fn conv2d_affine_relu(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    padding: usize,
) -> Result<Tensor> {
    let constants = !(w.track_op() || scale.track_op() || shift.track_op());
    if !x.device().is_cpu() || !constants {
        return channel_affine_relu(&conv2d_s1(x, w, padding)?, scale, shift);
    }
    let coefficients = Tensor::stack(&[scale, shift], 0)?;
    x.apply_op3(w, &coefficients, ConvAffineRelu { padding })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    use crate::layers::{max_abs_diff as max_diff, second_order_on};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        // Deterministic pseudo-random values without relying on the device RNG.
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn conv_forward_and_gradients_match_candle() {
        for &(b, c, o, h, w, k, p) in &[
            (2, 3, 4, 7, 6, 3, 1),
            (3, 2, 5, 5, 5, 1, 0),
            (2, 4, 3, 6, 8, 5, 2),
            (1, 1, 1, 4, 4, 3, 0),
            (2, 2, 3, 5, 4, 3, 2),
        ] {
            let x = Var::from_tensor(&randn(&[b, c, h, w], 1)).unwrap();
            let wt = Var::from_tensor(&randn(&[o, c, k, k], 2)).unwrap();
            let r = randn(&[b, o, h + 2 * p + 1 - k, w + 2 * p + 1 - k], 3);
            let ours = conv2d_s1(x.as_tensor(), wt.as_tensor(), p).unwrap();
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), p, 1, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(&ours, &theirs) < 1e-12, "forward k={k} p={p}");
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [x.as_tensor(), wt.as_tensor()] {
                let (a, bb) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert_eq!(a.dims(), bb.dims());
                assert!(max_diff(a, bb) < 1e-12, "gradient k={k} p={p}");
            }
        }
    }

    #[test]
    fn conv_handles_strided_inputs_and_f32() {
        let x = randn(&[2, 6, 5, 5], 4).to_dtype(DType::F32).unwrap();
        let w = randn(&[3, 3, 3, 3], 5).to_dtype(DType::F32).unwrap();
        let xs = x.narrow(1, 2, 3).unwrap();
        let ours = conv2d_s1(&xs, &w, 1).unwrap();
        let theirs = xs.conv2d(&w, 1, 1, 1, 1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
    }

    /// The fused convolution + affine + ReLU against the three ops: value, and the input's
    /// gradients of first and second order; with a variable kernel it falls back to them.
    #[test]
    fn conv_affine_relu_matches_the_three_ops() {
        second_order_on();
        for &(c, o, k, p) in &[(3, 5, 3, 1), (4, 8, 1, 0), (2, 9, 3, 2)] {
            let x0 = randn(&[2, c, 6, 5], 71);
            let w = randn(&[o, c, k, k], 72);
            let (scale, shift) = (randn(&[o], 73), randn(&[o], 74));
            let dims = conv2d_s1(&x0, &w, p).unwrap().dims().to_vec();
            let (q, r) = (randn(&dims, 75), randn(&dims, 76));
            let run = |fused: bool, w: &Tensor| -> Vec<Tensor> {
                let x = Var::from_tensor(&x0).unwrap();
                let x = x.as_tensor();
                let z = if fused {
                    conv2d_affine_relu(x, w, &scale, &shift, p)
                } else {
                    channel_affine_relu(&conv2d_s1(x, w, p).unwrap(), &scale, &shift)
                }
                .unwrap();
                let inner = (&z * &q).unwrap().sum_all().unwrap().backward().unwrap();
                let gx = inner.get(x).unwrap().clone();
                let l = ((&z * &r).unwrap().sum_all().unwrap()
                    + gx.sqr().unwrap().sum_all().unwrap())
                .unwrap();
                let g = l.backward().unwrap();
                let mut out = vec![z, gx, g.get(x).unwrap().clone()];
                out.extend(g.get(w).cloned());
                out
            };
            let (ours, theirs) = (run(true, &w), run(false, &w));
            assert_eq!(ours.len(), 3, "a constant kernel gets no gradient");
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(max_diff(a, b) < 1e-12, "c={c} o={o} k={k}: output {i}");
            }
            let wv = Var::from_tensor(&w).unwrap();
            let (ours, theirs) = (run(true, wv.as_tensor()), run(false, wv.as_tensor()));
            assert_eq!(ours.len(), 4, "a variable kernel keeps its gradient");
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(max_diff(a, b) < 1e-12, "variable kernel, output {i}");
            }
        }
    }

    #[test]
    fn input_gradient_only_skips_the_kernel_gradient_and_keeps_the_input_gradient() {
        let x = Var::from_tensor(&randn(&[2, 3, 5, 4], 51)).unwrap();
        let w = Var::from_tensor(&randn(&[4, 3, 3, 3], 52)).unwrap();
        let r = randn(&[2, 4, 5, 4], 53);
        let loss = || {
            (conv2d_s1(x.as_tensor(), w.as_tensor(), 1).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let full = loss().backward().unwrap();
        let only = input_gradient_only(|| loss().backward()).unwrap();
        assert!(only.get(w.as_tensor()).is_none());
        assert!(full.get(w.as_tensor()).is_some());
        let (a, b) = (full.get(x.as_tensor()), only.get(x.as_tensor()));
        assert_eq!(max_diff(a.unwrap(), b.unwrap()), 0.0);
        // The scope ends with the call.
        assert!(loss().backward().unwrap().get(w.as_tensor()).is_some());
    }

    /// `L(x, w) = Σ r·F(x, w) + ½‖∂Σ(q·F)/∂x‖² + ½‖∂Σ(q·F)/∂w‖²`, whose derivative needs
    /// the derivatives of `Gx` and `Gw`; compared with a central finite difference.
    #[test]
    fn conv_second_order_matches_finite_differences() {
        second_order_on();
        let (b, c, o, h, k, p) = (2, 2, 3, 5, 3, 1);
        let x0 = randn(&[b, c, h, h], 6);
        let w0 = randn(&[o, c, k, k], 7);
        let q = randn(&[b, o, h, h], 8);
        let loss = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            let y = conv2d_s1(x, w, p)?;
            let inner = (&y * &q)?.sum_all()?.backward()?;
            let gx = inner.get(x).expect("gx").clone();
            let gw = inner.get(w).expect("gw").clone();
            (y.sqr()?.sum_all()? * 0.1)? + ((gx.sqr()?.sum_all()? + gw.sqr()?.sum_all()?)? * 0.5)?
        };
        let x = Var::from_tensor(&x0).unwrap();
        let w = Var::from_tensor(&w0).unwrap();
        let l = loss(x.as_tensor(), w.as_tensor()).unwrap();
        let grads = l.backward().unwrap();
        let (gx, gw) = (
            grads.get(x.as_tensor()).unwrap(),
            grads.get(w.as_tensor()).unwrap(),
        );
        // directional derivatives along random directions
        let eps = 1e-5;
        for (dir_seed, which) in [(9u64, 0), (10, 1)] {
            let (base, grad) = if which == 0 { (&x0, gx) } else { (&w0, gw) };
            let d = randn(base.dims(), dir_seed);
            let eval = |s: f64| -> f64 {
                let moved = (base + (&d * s).unwrap()).unwrap();
                let xv = Var::from_tensor(if which == 0 { &moved } else { &x0 }).unwrap();
                let wv = Var::from_tensor(if which == 1 { &moved } else { &w0 }).unwrap();
                loss(xv.as_tensor(), wv.as_tensor())
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let an = (grad * &d)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(
                (fd - an).abs() <= 1e-6 * (1.0 + an.abs()),
                "second order ({which}): finite difference {fd} vs autodiff {an}"
            );
        }
    }

    /// `add_relu(affine_relu(x), y)` against Candle's `relu(relu(affine(x)) + y)`: values,
    /// and gradients of a loss that goes through their backward passes.
    #[test]
    fn fused_relu_ops_match_their_compositions_to_second_order() {
        second_order_on();
        let (x0, y0) = (randn(&[3, 4, 2, 5], 41), randn(&[3, 4, 2, 5], 42));
        let (a0, s0) = (randn(&[4], 43), randn(&[4], 44));
        let (q, r) = (randn(&[3, 4, 2, 5], 45), randn(&[3, 4, 2, 5], 46));
        type Block<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor>;
        let fused: Block<'_> = &|x, a, s, y| add_relu(&channel_affine_relu(x, a, s)?, y);
        let composed: Block<'_> = &|x, a, s, y| (channel_affine(x, a, s)?.relu()? + y)?.relu();
        let run = |f: Block<'_>| -> Vec<Tensor> {
            let v = [&x0, &a0, &s0, &y0].map(|t| Var::from_tensor(t).unwrap());
            let [x, a, s, y] = [0, 1, 2, 3].map(|i| v[i].as_tensor().clone());
            let z = f(&x, &a, &s, &y).unwrap();
            let inner = (&z * &q).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = inner.get(&x).unwrap().clone();
            // Σ r·z, not Σ z²: its gradient is nonzero where the ReLU is off, so the masks
            // matter.
            let l = ((&z * &r).unwrap().sum_all().unwrap() + gx.sqr().unwrap().sum_all().unwrap())
                .unwrap();
            let g = l.backward().unwrap();
            let mut out = vec![z, gx];
            out.extend([&x, &a, &s, &y].map(|t| g.get(t).unwrap().clone()));
            out
        };
        for (i, (a, b)) in run(fused).iter().zip(&run(composed)).enumerate() {
            assert!(max_diff(a, b) < 1e-12, "output {i}: {}", max_diff(a, b));
        }
    }

    #[test]
    fn relu_matches_candle_to_second_order_and_finite_differences() {
        second_order_on();
        let x0 = randn(&[3, 4, 2, 5], 31);
        let a0 = randn(&[4], 32);
        let s0 = randn(&[4], 33);
        let q = randn(&[3, 4, 2, 5], 34);
        assert_eq!(max_diff(&relu(&x0).unwrap(), &x0.relu().unwrap()), 0.0);
        // L = Σ relu(affine)² + ‖∂/∂x Σ q·relu(affine)‖²: its gradient goes through the
        // backward pass of the ReLU, so it exercises the mask op's own derivative.
        let loss = |r: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor, a: &Tensor, s: &Tensor| {
            let z = r(&channel_affine(x, a, s)?)?;
            let inner = (&z * &q)?.sum_all()?.backward()?;
            let gx = inner.get(x).expect("gx").clone();
            z.sqr()?.sum_all()? + gx.sqr()?.sum_all()?
        };
        let ours = |t: &Tensor| relu(t);
        let candles = |t: &Tensor| t.relu();
        let vars = || [&x0, &a0, &s0].map(|t| Var::from_tensor(t).unwrap());
        let (v1, v2) = (vars(), vars());
        let g1 = loss(
            &ours,
            v1[0].as_tensor(),
            v1[1].as_tensor(),
            v1[2].as_tensor(),
        )
        .unwrap()
        .backward()
        .unwrap();
        let g2 = loss(
            &candles,
            v2[0].as_tensor(),
            v2[1].as_tensor(),
            v2[2].as_tensor(),
        )
        .unwrap()
        .backward()
        .unwrap();
        for i in 0..3 {
            let (a, b) = (g1.get(v1[i].as_tensor()), g2.get(v2[i].as_tensor()));
            assert!(max_diff(a.unwrap(), b.unwrap()) < 1e-12, "arg {i}");
        }
        // And the scale's gradient against a central difference (no input crosses zero
        // within ±eps for these values).
        let d = randn(&[4], 35);
        let eps = 1e-6;
        let eval = |e: f64| -> f64 {
            let a = Var::from_tensor(&(&a0 + (&d * e).unwrap()).unwrap()).unwrap();
            let x = Var::from_tensor(&x0).unwrap();
            loss(&ours, x.as_tensor(), a.as_tensor(), &s0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
        let an = (g1.get(v1[1].as_tensor()).unwrap() * &d)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (fd - an).abs() <= 1e-6 * (1.0 + an.abs()),
            "fd {fd} vs {an}"
        );
    }

    #[test]
    fn avg_pool_matches_reshape_and_mean_to_second_order() {
        second_order_on();
        // The formula the layer used before: crop to even sizes, then a mean per window.
        let reference = |x: &Tensor| -> Result<Tensor> {
            let (b, c, h, w) = x.dims4()?;
            let x = x.narrow(2, 0, h / 2 * 2)?.narrow(3, 0, w / 2 * 2)?;
            x.reshape((b, c, h / 2, 2, w / 2, 2))?.mean((3, 5))
        };
        for (h, w) in [(6, 4), (5, 7)] {
            let x0 = randn(&[2, 3, h, w], 41);
            let a0 = randn(&[3], 42);
            let q = randn(&[2, 3, h / 2, w / 2], 43);
            assert!(max_diff(&avg_pool2x2(&x0).unwrap(), &reference(&x0).unwrap()) < 1e-15);
            // L = Σ pool(tanh(affine))² + ‖∂/∂x Σ q·pool(tanh(affine))‖²: its gradient runs
            // through the pooling's adjoint and the adjoint's own derivative.
            let loss = |pool: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor, a: &Tensor| {
                let z = pool(&channel_affine(x, a, &a.zeros_like()?)?.tanh()?)?;
                let inner = (&z * &q)?.sum_all()?.backward()?;
                let gx = inner.get(x).expect("gx").clone();
                z.sqr()?.sum_all()? + gx.sqr()?.sum_all()?
            };
            let ours = |t: &Tensor| avg_pool2x2(t);
            let vars = || [&x0, &a0].map(|t| Var::from_tensor(t).unwrap());
            let (v1, v2) = (vars(), vars());
            let g1 = loss(&ours, v1[0].as_tensor(), v1[1].as_tensor())
                .unwrap()
                .backward()
                .unwrap();
            let g2 = loss(&reference, v2[0].as_tensor(), v2[1].as_tensor())
                .unwrap()
                .backward()
                .unwrap();
            for i in 0..2 {
                let (a, b) = (g1.get(v1[i].as_tensor()), g2.get(v2[i].as_tensor()));
                assert!(max_diff(a.unwrap(), b.unwrap()) < 1e-12, "{h}×{w}, arg {i}");
            }
        }
    }

    /// `channel_affine2` against its broadcasting formula: value, and gradients (of all
    /// five arguments) of a loss that goes through its backward pass.
    #[test]
    fn channel_affine2_matches_broadcasting_to_second_order() {
        second_order_on();
        let (u0, v0) = (randn(&[3, 4, 2, 5], 61), randn(&[3, 4, 2, 5], 62));
        let coefs = [63, 64, 65].map(|seed| randn(&[4], seed));
        let (q, r) = (randn(&[3, 4, 2, 5], 66), randn(&[3, 4, 2, 5], 67));
        let broadcast = |u: &Tensor, v: &Tensor, k: &[Tensor]| -> Result<Tensor> {
            let shaped = |t: &Tensor| t.reshape((1, 4, 1, 1));
            u.broadcast_mul(&shaped(&k[0])?)?
                .add(&v.broadcast_mul(&shaped(&k[1])?)?)?
                .broadcast_add(&shaped(&k[2])?)
        };
        let fused =
            |u: &Tensor, v: &Tensor, k: &[Tensor]| channel_affine2(u, v, &k[0], &k[1], &k[2]);
        type F<'a> = &'a dyn Fn(&Tensor, &Tensor, &[Tensor]) -> Result<Tensor>;
        let run = |f: F<'_>| -> Vec<Tensor> {
            let vars: Vec<Var> = [&u0, &v0]
                .into_iter()
                .chain(&coefs)
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let t: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let z = f(&t[0], &t[1], &t[2..]).unwrap().tanh().unwrap();
            let inner = (&z * &q).unwrap().sum_all().unwrap().backward().unwrap();
            let gu = inner.get(&t[0]).unwrap().clone();
            let l = ((&z * &r).unwrap().sum_all().unwrap() + gu.sqr().unwrap().sum_all().unwrap())
                .unwrap();
            let g = l.backward().unwrap();
            let mut out = vec![z, gu];
            out.extend(t.iter().map(|t| g.get(t).unwrap().clone()));
            out
        };
        for (i, (a, b)) in run(&fused).iter().zip(&run(&broadcast)).enumerate() {
            assert!(max_diff(a, b) < 1e-12, "output {i}: {}", max_diff(a, b));
        }
    }

    #[test]
    fn channel_ops_match_broadcasting_and_differentiate_twice() {
        second_order_on();
        let x0 = randn(&[3, 4, 2, 5], 11);
        let a0 = randn(&[4], 12);
        let s0 = randn(&[4], 13);
        let y = channel_affine(&x0, &a0, &s0).unwrap();
        let want = x0
            .broadcast_mul(&a0.reshape((1, 4, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&s0.reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        assert!(max_diff(&y, &want) < 1e-14);
        let cd = channel_dot(&x0, &y).unwrap();
        assert!(max_diff(&cd, &(&x0 * &y).unwrap().sum((0, 2, 3)).unwrap()) < 1e-12);
        let cs = channel_sum(&x0).unwrap();
        assert!(max_diff(&cs, &x0.sum((0, 2, 3)).unwrap()) < 1e-12);
        let ex = channel_expand(&a0, &[3, 4, 2, 5]).unwrap();
        assert!(
            max_diff(
                &ex,
                &a0.reshape((1, 4, 1, 1))
                    .unwrap()
                    .broadcast_as((3, 4, 2, 5))
                    .unwrap()
            ) < 1e-15
        );

        // second order: L = Σ tanh(affine)² + ‖∂/∂x Σ q·tanh(affine)‖²
        let q = randn(&[3, 4, 2, 5], 14);
        let loss = |x: &Tensor, a: &Tensor, s: &Tensor| -> Result<Tensor> {
            let z = channel_affine(x, a, s)?.tanh()?;
            let e = channel_expand(&channel_sum(&z)?, z.dims())?;
            let e = (e + channel_expand(&channel_dot(&z, x)?, z.dims())?)?;
            let z = (z + (e * 0.1)?)?;
            let inner = (&z * &q)?.sum_all()?.backward()?;
            let gx = inner.get(x).expect("gx").clone();
            z.sqr()?.sum_all()? + gx.sqr()?.sum_all()?
        };
        let (x, a, s) = (
            Var::from_tensor(&x0).unwrap(),
            Var::from_tensor(&a0).unwrap(),
            Var::from_tensor(&s0).unwrap(),
        );
        let grads = loss(x.as_tensor(), a.as_tensor(), s.as_tensor())
            .unwrap()
            .backward()
            .unwrap();
        let eps = 1e-5;
        for which in 0..3 {
            let base = [&x0, &a0, &s0][which];
            let v = [&x, &a, &s][which];
            let d = randn(base.dims(), 20 + which as u64);
            let eval = |e: f64| -> f64 {
                let mut args = [x0.clone(), a0.clone(), s0.clone()];
                args[which] = (base + (&d * e).unwrap()).unwrap();
                let vs: Vec<Var> = args.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
                loss(vs[0].as_tensor(), vs[1].as_tensor(), vs[2].as_tensor())
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let an = (grads.get(v.as_tensor()).unwrap() * &d)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(
                (fd - an).abs() <= 1e-6 * (1.0 + an.abs()),
                "arg {which}: fd {fd} vs {an}"
            );
        }
    }
}
