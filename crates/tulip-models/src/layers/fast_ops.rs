//! Fast CPU kernels for the hot spots of training, written as Candle custom ops whose
//! backward passes are themselves built from differentiable ops (these same custom ops),
//! so that gradients of gradients (the exact Lipschitz penalty) keep working when
//! `CANDLE_GRAD_DO_NOT_DETACH=1`.
//!
//! * **Per-channel ops** over `[B, C, …]`: [`channel_sum`] (sum over every dimension but
//!   1), [`channel_expand`] (its adjoint: broadcast a `[C]` vector) and [`channel_affine`]
//!   (`x·a_c + b_c`). Candle differentiates a broadcast by summing over several
//!   non-trailing dimensions at once, which its CPU backend does element by element with
//!   index arithmetic; these do it with contiguous loops.
//! * **ReLU** fused where it follows an op (the residual add, an affine map), with one
//!   masked copy as its backward; **2×2 average pooling**.
//! * **Stride-1 convolution** (`conv`): three bilinear ops closed under differentiation,
//!   run by the direct SIMD kernels of `direct_conv`, which replaced im2col + GEMM
//!   (`bench/RESULTS.md` has both rates).
//! * **Batch norm** in training mode as one op, and its input gradient as another for
//!   the gradients of gradients (`batch_norm`).
//!
//! Two thread-local scopes let a backward pass whose result is never differentiated
//! again take shortcuts: [`first_order_gradients`] and [`input_gradient_only`].
//!
//! Only the CPU has kernels; callers fall back to Candle's ops on other devices.

mod batch_norm;
mod conv;
mod direct_conv;

use std::borrow::Cow;
use std::cell::Cell;
use std::ops::Range;
use std::sync::Mutex;
use std::thread::LocalKey;

pub(super) use batch_norm::{batch_norm_train, batch_statistics};
pub use conv::{conv2d_affine_relu, conv2d_s1, conv2d_s1_statistics, ChannelStatistics};

use candle_core::cpu_backend::{binary_map_vec_par, unary_map_vec_par};
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

/// Runs `f` with backward passes that compute no gradient for convolution kernels or
/// batch norms' weights and biases (the [`GradStore`](candle_core::backprop::GradStore)
/// then has none for them): for a pass whose only use is the input's gradient, such as
/// the Lipschitz penalties' inner pass, this skips a third of its convolution work, and,
/// with second-order gradients on, the graph of it. Parameters are assumed not to depend
/// on the input, as in every model here. Applies to this thread only.
pub fn input_gradient_only<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&INPUT_GRADIENT_ONLY, f)
}

fn parameter_gradients_wanted() -> bool {
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

/// The threads the kernels share their work among: Candle's persistent worker pool and
/// the calling thread.
fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Runs `job(first index, part)` on each part of `parts`, part `t` starting at index
/// `t · per_thread` (an image, a channel), and returns the results in order.
///
/// The parts run on Candle's persistent worker pool (the calling thread takes one), dealt
/// round-robin when there are more parts than [`threads`], so that no call pays for
/// starting a thread (as a scoped thread per call did).
fn on_threads<P: Send, R: Send>(
    per_thread: usize,
    parts: impl Iterator<Item = P>,
    job: impl Fn(usize, P) -> R + Sync,
) -> Vec<R> {
    let parts: Vec<Mutex<Option<P>>> = parts.map(|p| Mutex::new(Some(p))).collect();
    let results: Vec<Mutex<Option<R>>> = parts.iter().map(|_| Mutex::new(None)).collect();
    let run = |t: usize| {
        let part = parts[t]
            .lock()
            .expect("part lock")
            .take()
            .expect("part taken once");
        let result = job(t * per_thread, part);
        *results[t].lock().expect("result lock") = Some(result);
    };
    if parts.len() == 1 {
        run(0);
    } else if parts.len() > 1 {
        let stride = threads();
        candle_core::utils::barrier_pool().execute(|tid| {
            (tid..parts.len()).step_by(stride).for_each(run);
        });
    }
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("result lock")
                .expect("every part ran")
        })
        .collect()
}

/// Plane `i` (of `sz` elements) of a `[B, C, S]` tensor's data.
fn plane<T>(t: &[T], sz: usize, i: usize) -> &[T] {
    &t[i * sz..][..sz]
}

/// Per channel of a `[B, C, …]` tensor, the sum over its planes of `per_plane(i)` (`i` a
/// plane, `i mod C` its channel), added in image order. The planes are visited in memory
/// order, shared among the threads: channel by channel, each thread's reads jumped from
/// image to image (batch norm's backward sums done that way slowed every training step,
/// the exact penalty's most).
fn channel_totals<const N: usize>(
    (b, c): (usize, usize),
    per_plane: impl Fn(usize) -> [f64; N] + Sync,
) -> Vec<[f64; N]> {
    let planes = map_indices(b * c, per_plane);
    let mut totals = vec![[0.0; N]; c];
    for (i, p) in planes.iter().enumerate() {
        for (t, v) in totals[i % c.max(1)].iter_mut().zip(p) {
            *t += v;
        }
    }
    totals
}

/// `[f(i) for i in 0..n]` (`i` a channel, a plane), the indices shared among the threads
/// in contiguous ranges. Each value is computed by one thread in one fixed order, so the
/// result does not depend on the number of threads.
fn map_indices<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let per_thread = n.div_ceil(threads().max(1)).max(1);
    let ranges = (0..n)
        .step_by(per_thread)
        .map(|i0| i0..(i0 + per_thread).min(n));
    let parts = on_threads(per_thread, ranges, |_, range| {
        range.map(&f).collect::<Vec<_>>()
    });
    parts.into_iter().flatten().collect()
}

/// `N` outputs of `planes` planes of `sz` elements, computed plane by plane on the
/// threads: `fill(i, outputs)` writes plane `i` of each.
///
/// For passes with work enough per element: the outputs are zero-filled first, as safe
/// Rust has no uninitialised vectors, and that fill costs what the second thread saves
/// on passes of two or three inputs and one output (measured on batch norm's). Batch
/// norm's input-gradient backward, three inputs and two outputs with a mask, has work
/// enough to gain.
fn planes_on_threads<T: WithDType, const N: usize>(
    planes: usize,
    sz: usize,
    fill: impl Fn(usize, [&mut [T]; N]) + Sync,
) -> [Vec<T>; N] {
    let mut outputs: [Vec<T>; N] = std::array::from_fn(|_| vec![T::from_f64(0.0); planes * sz]);
    let per_thread = planes.div_ceil(threads()).max(1);
    let mut chunks = outputs
        .each_mut()
        .map(|o| o.chunks_mut(per_thread * sz.max(1)));
    let parts = std::iter::from_fn(|| {
        let parts: [Option<&mut [T]>; N] = chunks.each_mut().map(|c| c.next());
        parts.into_iter().collect::<Option<Vec<_>>>()
    });
    on_threads(per_thread, parts, |i0, mut part| {
        let count = part.first().map_or(0, |p| p.len() / sz.max(1));
        for j in 0..count {
            let mut outs = part.iter_mut().map(|p| &mut p[j * sz..][..sz]);
            fill(
                i0 + j,
                std::array::from_fn(|_| outs.next().expect("N outputs")),
            );
        }
    });
    outputs
}

/// Calls `f(i, range, out)` for each piece of plane `i` (planes of `sz` elements) that the
/// element range `at .. at + out.len()` covers, with `range` the piece's elements within
/// the range and `out` its part of `out`.
fn by_plane<T>(
    at: usize,
    sz: usize,
    out: &mut [T],
    mut f: impl FnMut(usize, Range<usize>, &mut [T]),
) {
    let sz = sz.max(1);
    let mut done = 0;
    while done < out.len() {
        let (i, offset) = ((at + done) / sz, (at + done) % sz);
        let len = (sz - offset).min(out.len() - done);
        f(i, done..done + len, &mut out[done..][..len]);
        done += len;
    }
}

/// Where `piece`, a subslice of `whole`, starts in it.
fn offset_in<T>(whole: &[T], piece: &[T]) -> usize {
    (piece.as_ptr() as usize - whole.as_ptr() as usize) / std::mem::size_of::<T>().max(1)
}

/// A new vector of `x`'s length computed plane by plane (planes of `sz` elements) on the
/// threads: `f(i, x, out)` fills `out` from `x`, both a piece of plane `i`.
///
/// Candle's parallel map writes its output into uninitialised memory, which safe code here
/// cannot; with a zero fill first, the fill cost what the second thread saved on these
/// one-output passes. Its map hands over pieces without their positions, so each piece's
/// position is recovered from its address in `x`.
fn map_planes<T: WithDType>(
    x: &[T],
    sz: usize,
    f: impl Fn(usize, &[T], &mut [T]) + Sync,
) -> Vec<T> {
    let layout = Layout::contiguous(x.len());
    unary_map_vec_par(
        x,
        &layout,
        |_| unreachable!("a contiguous layout is mapped piece by piece"),
        |xs, out| {
            by_plane(offset_in(x, xs), sz, out, |i, range, out| {
                f(i, &xs[range], out)
            });
        },
    )
}

/// [`map_planes`] of two inputs of one length: `f(i, x, y, out)`.
fn zip_planes<T: WithDType>(
    x: &[T],
    y: &[T],
    sz: usize,
    f: impl Fn(usize, &[T], &[T], &mut [T]) + Sync,
) -> Vec<T> {
    assert_eq!(x.len(), y.len(), "zip_planes: lengths differ");
    let layout = Layout::contiguous(x.len());
    binary_map_vec_par(
        &layout,
        &layout,
        x,
        y,
        |_, _| unreachable!("contiguous layouts are mapped piece by piece"),
        |xs, ys, out| {
            by_plane(offset_in(x, xs), sz, out, |i, range, out| {
                f(i, &xs[range.clone()], &ys[range], out);
            });
        },
        |_, _, _| unreachable!("contiguous layouts of one shape do not broadcast"),
    )
}

/// `max(v, 0)` with PyTorch's conventions: 0 at 0, and 0 for NaN.
#[inline(always)]
fn relu_value<T: PartialOrd + Copy>(v: T, zero: T) -> T {
    if v > zero {
        v
    } else {
        zero
    }
}

/// Fails unless the two operands of `what` have one shape.
fn same_dims(what: &str, l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.dims() != l2.dims() {
        bail!("{what}: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
    }
    Ok(())
}

/// `out[i] = f(x[i], y[i])` for two tensors of one shape.
fn zip_map<T: WithDType>(
    what: &str,
    (xs, xl): (&CpuStorage, &Layout),
    (ys, yl): (&CpuStorage, &Layout),
    f: impl Fn(T, T) -> T + Sync,
) -> Result<(CpuStorage, Shape)> {
    same_dims(what, xl, yl)?;
    let (x, y) = (T::cpu_storage_as_slice(xs)?, T::cpu_storage_as_slice(ys)?);
    // On the threads without a zero fill, as `map_planes`. (`f` must capture by value: a
    // captured reference is reloaded for every element and the loop is not vectorised.)
    let out = binary_map_vec_par(
        xl,
        yl,
        x,
        y,
        &f,
        |a, b, out| {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        },
        |b, a, out| {
            for (o, &a) in out.iter_mut().zip(a) {
                *o = f(a, b);
            }
        },
    );
    Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
}

/// The gradient reaching the input of an op whose output `out` went through a ReLU (if
/// `relu`): positive exactly where the ReLU's input was.
fn through_relu(relu: bool, grad: &Tensor, out: &Tensor) -> Result<Tensor> {
    if relu {
        relu_mask(grad, out)
    } else {
        Ok(grad.clone())
    }
}

/// `[B, C, S]` view of a `[B, C, …]` shape.
fn bcs(dims: &[usize]) -> Result<(usize, usize, usize)> {
    if dims.len() < 2 {
        bail!("per-channel op needs a [B, C, …] tensor, got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// `f::<f32>(args)` or `f::<f64>(args)` by the storage's type (`f` a function or a path
/// such as `Self::forward`); an error for any other.
macro_rules! float_dispatch {
    ($s:expr, $($f:ident)::+ ( $($arg:expr),* )) => {
        match $s {
            CpuStorage::F32(_) => $($f)::+::<f32>($($arg),*),
            CpuStorage::F64(_) => $($f)::+::<f64>($($arg),*),
            _ => bail!("fast_ops: only f32 and f64 are supported"),
        }
    };
}
use float_dispatch;

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
    let sums = channel_totals((b, c), |i| [block_sum(plane(&x, sz, i))]);
    let out: Vec<T> = sums.iter().map(|[s]| T::from_f64(*s)).collect();
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

/// `x − mean(x)` per channel of `[B, C, …]`, the mean over every dimension but 1. A linear
/// projection that is its own adjoint, so its backward is itself: one pass, where the
/// composition `x − expand(sum(x)/N)` made three (a copy, an expand and an add).
struct Centre;

fn centre_cpu<T: WithDType>(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let (b, c, sz) = bcs(l.dims())?;
    let x = contiguous::<T>(s, l)?;
    let n = (b * sz).max(1) as f64;
    let sums = channel_totals((b, c), |i| [block_sum(plane(&x, sz, i))]);
    let means: Vec<T> = sums.iter().map(|[s]| T::from_f64(s / n)).collect();
    let mut out = Vec::with_capacity(x.len());
    for (i, plane) in x.chunks_exact(sz.max(1)).enumerate() {
        let m = means[i % c];
        out.extend(plane.iter().map(|&v| v - m));
    }
    Ok((T::to_cpu_storage_owned(out), l.shape().clone()))
}

impl CustomOp1 for Centre {
    fn name(&self) -> &'static str {
        "tulip-centre"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s, centre_cpu(s, l))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(centre(grad)?))
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
    same_dims("channel_dot", l1, l2)?;
    let (b, c, sz) = bcs(l1.dims())?;
    let x = contiguous::<T>(s1, l1)?;
    let y = contiguous::<T>(s2, l2)?;
    let dots = channel_totals((b, c), |i| [block_dot(plane(&x, sz, i), plane(&y, sz, i))]);
    let out: Vec<T> = dots.iter().map(|[d]| T::from_f64(*d)).collect();
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
        if x.id() == y.id() {
            // Σ x·x (a variance): both contributions, 2·x·g, in one pass and one node,
            // given to the first argument (Candle adds both arguments' gradients to the
            // one tensor's anyway).
            let dx = x
                .track_op()
                .then(|| channel_affine(x, &grad.affine(2.0, 0.0)?, &zero))
                .transpose()?;
            return Ok((dx, None));
        }
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
                out.extend(plane.map(|&v| v * ac + sc).map(|v| relu_value(v, zero)));
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
        let grad = &through_relu(self.relu, grad, res)?;
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
    let f = |v| relu_value(v, T::zero());
    // On the threads without a zero fill, as `map_planes`.
    let out = unary_map_vec_par(T::cpu_storage_as_slice(s)?, l, f, |x, out| {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f(v);
        }
    });
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
    let zero = T::from_f64(0.0);
    zip_map("relu_mask", (gs, gl), (xs, xl), move |g: T, x: T| {
        if x > zero {
            g
        } else {
            zero
        }
    })
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
    let zero = T::from_f64(0.0);
    zip_map("add_relu", (xs, xl), (ys, yl), move |a: T, b: T| {
        relu_value(a + b, zero)
    })
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
/// differentiable to any order. Candle's strided `mean` over the window goes element by
/// element with index arithmetic, far slower. Other devices use `reshape` + `mean`.
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

/// `x − mean(x)` per channel of `x: [B, C, …]`, the mean taken over every dimension but 1;
/// differentiable to any order.
///
/// # Errors
/// Fails on a tensor of rank below 2.
pub fn centre(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.apply_op1(Centre)
    } else {
        let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        x.broadcast_sub(&x.mean_keepdim(dims.as_slice())?)
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

/// `relu(x·a_c + s_c [+ skip])`: [`channel_affine_relu`], or with a residual `skip` the
/// affine map and [`add_relu`]. The unfused form of `conv2d_affine_relu`'s epilogue.
///
/// # Errors
/// Fails on a shape mismatch.
pub fn channel_affine_add_relu(
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::layers::{max_abs_diff as max_diff, second_order_on};

    /// The plane-wise parallel maps against the same map written out element by element:
    /// large enough for Candle's map to split the work (at 64Ki elements), in pieces of
    /// 16Ki that start and end inside planes of 777, and small (one piece).
    #[test]
    fn plane_maps_give_each_element_its_plane() {
        for (planes, sz) in [(200, 777), (3, 5), (90, 1024)] {
            let n = planes * sz;
            let x: Vec<f32> = (0..n).map(|j| (j % 1013) as f32).collect();
            let y: Vec<f32> = (0..n).map(|j| (j % 7) as f32).collect();
            let mapped = map_planes(&x, sz, |i, x, out| {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * (i + 1) as f32;
                }
            });
            let zipped = zip_planes(&x, &y, sz, |i, x, y, out| {
                for ((o, &a), &b) in out.iter_mut().zip(x).zip(y) {
                    *o = a + b * i as f32;
                }
            });
            for j in 0..n {
                let i = (j / sz) as f32;
                assert_eq!(
                    mapped[j],
                    x[j] * (i + 1.0),
                    "map: element {j} of {planes}×{sz}"
                );
                assert_eq!(
                    zipped[j],
                    x[j] + y[j] * i,
                    "zip: element {j} of {planes}×{sz}"
                );
            }
        }
    }

    pub(super) fn randn(shape: &[usize], seed: u64) -> Tensor {
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

    /// The element-wise ops on inputs large enough for Candle's parallel maps (from 64Ki
    /// elements), one of them a strided view, against Candle's compositions.
    #[test]
    fn elementwise_ops_match_candle_on_large_and_strided_inputs() {
        let x = randn(&[2, 4, 100, 100], 61);
        let y = randn(&[2, 4, 100, 100], 62).transpose(2, 3).unwrap();
        let z = randn(&[2, 4, 100, 100], 63);
        for (a, b) in [(&x, &z), (&x, &y), (&y, &x), (&x, &x)] {
            let sum = (a + b).unwrap().relu().unwrap();
            assert_eq!(max_diff(&add_relu(a, b).unwrap(), &sum), 0.0);
            assert_eq!(max_diff(&relu(a).unwrap(), &a.relu().unwrap()), 0.0);
            let open = b.gt(0.0).unwrap().to_dtype(a.dtype()).unwrap();
            let masked = (a * open).unwrap();
            assert_eq!(max_diff(&relu_mask(a, b).unwrap(), &masked), 0.0);
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
        let centred = centre(&x0).unwrap();
        let mean = x0.mean_keepdim((0, 2, 3)).unwrap();
        assert!(max_diff(&centred, &x0.broadcast_sub(&mean).unwrap()) < 1e-14);
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

        // second order: L = Σ z² + ‖∂/∂x Σ q·z‖², z built from tanh(affine) and the
        // channel sums and dots
        let q = randn(&[3, 4, 2, 5], 14);
        let loss = |x: &Tensor, a: &Tensor, s: &Tensor| -> Result<Tensor> {
            let z = channel_affine(x, a, s)?.tanh()?;
            let e = channel_expand(&channel_sum(&z)?, z.dims())?;
            let e = (e + channel_expand(&channel_dot(&z, x)?, z.dims())?)?;
            // A self-dot, whose backward takes its own path (one tensor, both arguments).
            let e = (e + channel_expand(&channel_dot(&z, &z)?, z.dims())?)?;
            let z = (z + (e * 0.1)?)?;
            let z = (&z + (centre(&(&z * x)?)? * 0.5)?)?;
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
