//! Per-channel ops over `[B, C, …]`: [`channel_sum`] (sum over every dimension but 1),
//! [`channel_expand`] (its adjoint: broadcast a `[C]` vector), [`centre`], [`channel_dot`]
//! and [`channel_affine`] (`x·a_c + b_c`, with an optional ReLU), each differentiated by
//! the others. Candle differentiates a broadcast by summing over several non-trailing
//! dimensions at once, which its CPU backend does element by element with index
//! arithmetic; these do it with contiguous loops.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType,
};

use super::relu::{relu_value, through_relu};
use super::storage::{batch_channels_positions, contiguous, float_dispatch, same_dims};
use super::threads::{channel_totals, plane};

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
    let (b, c, sz) = batch_channels_positions(l.dims())?;
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
    let (b, c, sz) = batch_channels_positions(l.dims())?;
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
    let (b, c, sz) = batch_channels_positions(l1.dims())?;
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
    let (b, c, sz) = batch_channels_positions(dims)?;
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
    let (b, c, sz) = batch_channels_positions(xl.dims())?;
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

/// Sum of `x: [B, C, …]` over every dimension but 1, as `[C]`; differentiable to any order.
///
/// # Errors
/// Fails on a tensor of rank below 2.
pub(crate) fn channel_sum(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(ChannelSum)
}

/// `x − mean(x)` per channel of `x: [B, C, …]`, the mean taken over every dimension but 1;
/// differentiable to any order.
///
/// # Errors
/// Fails on a tensor of rank below 2.
pub(crate) fn centre(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(Centre)
}

/// `Σ x·y` of two `[B, C, …]` tensors over every dimension but 1, as `[C]`, without a
/// full-size temporary; differentiable to any order.
///
/// # Errors
/// Fails if the shapes differ or have rank below 2.
pub(crate) fn channel_dot(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    x.apply_op2(y, ChannelDot)
}

/// Broadcasts `v: [C]` to `dims = [B, C, …]`; differentiable to any order.
///
/// # Errors
/// Fails if `v` does not have `dims[1]` elements.
pub(crate) fn channel_expand(v: &Tensor, dims: &[usize]) -> Result<Tensor> {
    v.apply_op1(ChannelExpand(dims.to_vec()))
}

/// `x·a + s` with `a`, `s: [C]` applied along dimension 1 of `x: [B, C, …]`;
/// differentiable to any order.
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn channel_affine(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    x.apply_op3(a, s, ChannelAffine { relu: false })
}

/// `relu(x·a_c + s_c)` in one pass (one node instead of two); differentiable to any
/// order.
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn channel_affine_relu(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    x.apply_op3(a, s, ChannelAffine { relu: true })
}

#[cfg(test)]
mod tests {
    use super::super::relu::add_relu;
    use super::*;
    use candle_core::Var;

    use crate::kernels::test_values::seeded_uniform;
    use crate::layers::{max_abs_diff as max_diff, second_order_on};

    /// `add_relu(affine_relu(x), y)` against Candle's `relu(relu(affine(x)) + y)`: values,
    /// and gradients of a loss that goes through their backward passes.
    #[test]
    fn fused_relu_ops_match_their_compositions_to_second_order() {
        second_order_on();
        let (x0, y0) = (
            seeded_uniform(&[3, 4, 2, 5], 41),
            seeded_uniform(&[3, 4, 2, 5], 42),
        );
        let (a0, s0) = (seeded_uniform(&[4], 43), seeded_uniform(&[4], 44));
        let (q, r) = (
            seeded_uniform(&[3, 4, 2, 5], 45),
            seeded_uniform(&[3, 4, 2, 5], 46),
        );
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
    fn channel_ops_match_broadcasting_and_differentiate_twice() {
        second_order_on();
        let x0 = seeded_uniform(&[3, 4, 2, 5], 11);
        let a0 = seeded_uniform(&[4], 12);
        let s0 = seeded_uniform(&[4], 13);
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
        let q = seeded_uniform(&[3, 4, 2, 5], 14);
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
            let d = seeded_uniform(base.dims(), 20 + which as u64);
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
