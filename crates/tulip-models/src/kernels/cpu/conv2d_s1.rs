//! Stride-1 convolution as Candle custom ops: the convolution `F(x, w)`, its input
//! gradient `Gx(g, w)` (a convolution with the transposed, flipped kernel) and its weight
//! gradient `Gw(x, g)`, a family closed under differentiation (with
//! `⟨F(x,w), g⟩ = ⟨x, Gx(g,w)⟩ = ⟨w, Gw(x,g)⟩` each one's derivatives are the other two),
//! so gradients of any order never use Candle's slow CPU `conv_transpose2d`; and the
//! evaluation-mode convolution + batch norm + ReLU for constant models. The arithmetic is
//! in [`direct_conv`].

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

use super::direct_conv::{self, ConvGeometry};
use super::simd::{Isa, Lane};
use super::statistics::{statistics_from_moments, ChannelStatistics};
use super::storage::{contiguous, float_dispatch};
use crate::kernels::grad_mode::parameter_gradients_wanted;

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

fn conv_s1_cpu<T: WithDType + Lane>(
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
            let (g, o) = ConvGeometry::of_forward(d1, d2, p, "conv")?;
            let y = direct_conv::conv(Isa::Chosen, &a, &g, &bt, o);
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
            let g = ConvGeometry {
                b: d1[0],
                c: o,
                h: d1[2],
                w: d1[3],
                kh,
                kw,
                ph: kh - 1 - p,
                pw: kw - 1 - p,
            };
            let y = direct_conv::conv(Isa::Chosen, &a, &g, &wf, c);
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
            let g = ConvGeometry {
                b,
                c,
                h,
                w,
                kh,
                kw,
                ph: p,
                pw: p,
            };
            let y = direct_conv::grad_weight(Isa::Chosen, &a, &g, &bt, o);
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
                // Under `input_gradient_only` a kernel that is a variable gets no gradient.
                // One computed from a variable (a group's slice of a grouped convolution's
                // kernel) still does: Candle's backward pass expects a gradient for every
                // tracked tensor that is not a variable, and stops without one.
                (arg2.track_op() && (parameter_gradients_wanted() || !arg2.is_variable()))
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
pub(crate) fn conv2d_s1(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    x.apply_op2(
        w,
        ConvS1 {
            kind: ConvKind::Forward,
            padding,
        },
    )
}

/// [`conv2d_s1`] and its output's [`ChannelStatistics`], taken plane by plane
/// as the convolution writes them: training-mode batch norm, which follows most
/// convolutions, then need not read the output twice more for them.
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn conv2d_s1_statistics(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
) -> Result<(Tensor, ChannelStatistics)> {
    // A custom op returns one tensor: the statistics come back through a slot the op
    // shares with this function.
    let slot = Arc::new(Mutex::new(None));
    let op = ConvStatistics {
        padding,
        statistics: slot.clone(),
    };
    let y = x.apply_op2(w, op)?;
    let statistics = slot
        .lock()
        .expect("statistics lock")
        .take()
        .expect("the forward pass ran");
    Ok((y, statistics))
}

/// [`ConvS1`]'s forward pass that also leaves its output's statistics in `statistics`.
struct ConvStatistics {
    padding: usize,
    statistics: Arc<Mutex<Option<ChannelStatistics>>>,
}

impl ConvStatistics {
    fn cpu<T: WithDType + Lane>(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let what = "conv2d_s1_statistics";
        let (g, o) = ConvGeometry::of_forward(xl.dims(), wl.dims(), self.padding, what)?;
        let (x, w) = (contiguous::<T>(xs, xl)?, contiguous::<T>(ws, wl)?);
        let (y, moments) = direct_conv::conv_then(Isa::Chosen, &x, &g, &w, o, None, true);
        let (ho, wo) = (g.ho(), g.wo());
        *self.statistics.lock().expect("statistics lock") =
            Some(statistics_from_moments(&moments, (g.b, o, ho * wo)));
        Ok((T::to_cpu_storage_owned(y), Shape::from((g.b, o, ho, wo))))
    }
}

impl CustomOp2 for ConvStatistics {
    fn name(&self) -> &'static str {
        "tulip-conv2d-s1-statistics"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s1, Self::cpu(self, (s1, l1), (s2, l2)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let forward = ConvS1 {
            kind: ConvKind::Forward,
            padding: self.padding,
        };
        forward.bwd(x, w, y, grad)
    }
}

/// The input gradient of [`conv2d_s1`]: `g: [B, O, H', W']`, `w: [O, C, kh, kw]` →
/// `[B, C, H, W]`.
pub(super) fn conv2d_grad_input(g: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    use crate::kernels::grad_mode::input_gradient_only;
    use crate::kernels::test_values::seeded_uniform;
    use crate::layers::{max_abs_diff as max_diff, second_order_on};

    #[test]
    fn conv_forward_and_gradients_match_candle() {
        for &(b, c, o, h, w, k, p) in &[
            (2, 3, 4, 7, 6, 3, 1),
            (3, 2, 5, 5, 5, 1, 0),
            (2, 4, 3, 6, 8, 5, 2),
            (1, 1, 1, 4, 4, 3, 0),
            (2, 2, 3, 5, 4, 3, 2),
        ] {
            let x = Var::from_tensor(&seeded_uniform(&[b, c, h, w], 1)).unwrap();
            let wt = Var::from_tensor(&seeded_uniform(&[o, c, k, k], 2)).unwrap();
            let r = seeded_uniform(&[b, o, h + 2 * p + 1 - k, w + 2 * p + 1 - k], 3);
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

    /// The statistics the convolution takes as it writes its output against that output's
    /// per-channel mean and biased variance computed directly (in f64, two passes): 3×3
    /// and 1×1 kernels (the second over whole tiles, its own path), f64 and f32, and
    /// outputs whose means are far from their spread. The output itself is Candle's
    /// convolution's.
    #[test]
    fn conv_statistics_are_the_outputs_mean_and_variance() {
        for &(b, c, o, h, w, k, p, offset) in &[
            (3, 2, 5, 7, 6, 3, 1, 0.0),
            (2, 3, 9, 8, 4, 1, 0, 0.0),
            (4, 3, 9, 5, 5, 3, 1, 50.0),
            (2, 3, 4, 8, 8, 1, 0, -20.0),
        ] {
            let x = seeded_uniform(&[b, c, h, w], 8)
                .affine(1.0, offset)
                .unwrap();
            let wt = seeded_uniform(&[o, c, k, k], 9);
            for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
                let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
                let (y, (mean, var)) = conv2d_s1_statistics(&cast(&x), &cast(&wt), p).unwrap();
                let theirs = cast(&x).conv2d(&cast(&wt), p, 1, 1, 1).unwrap();
                assert!(max_diff(&y, &theirs) < tol * (1.0 + offset.abs()), "output");
                let (ho, wo) = (y.dim(2).unwrap(), y.dim(3).unwrap());
                let y = y.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
                let values = y.to_vec1::<f64>().unwrap();
                for oo in 0..o {
                    let planes = values.chunks_exact(ho * wo).skip(oo).step_by(o);
                    let v: Vec<f64> = planes.flatten().copied().collect();
                    let n = v.len() as f64;
                    let m = v.iter().sum::<f64>() / n;
                    let s2 = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
                    let case = format!("{dtype:?} k={k} offset {offset}, channel {oo}");
                    assert!((mean[oo] - m).abs() < tol * (1.0 + m.abs()), "{case}: mean");
                    assert!((var[oo] - s2).abs() < tol * s2, "{case}: variance");
                }
            }
        }
    }

    #[test]
    fn conv_handles_strided_inputs_and_f32() {
        let x = seeded_uniform(&[2, 6, 5, 5], 4)
            .to_dtype(DType::F32)
            .unwrap();
        let w = seeded_uniform(&[3, 3, 3, 3], 5)
            .to_dtype(DType::F32)
            .unwrap();
        let xs = x.narrow(1, 2, 3).unwrap();
        let ours = conv2d_s1(&xs, &w, 1).unwrap();
        let theirs = xs.conv2d(&w, 1, 1, 1, 1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
    }

    #[test]
    fn input_gradient_only_skips_the_kernel_gradient_and_keeps_the_input_gradient() {
        let x = Var::from_tensor(&seeded_uniform(&[2, 3, 5, 4], 51)).unwrap();
        let w = Var::from_tensor(&seeded_uniform(&[4, 3, 3, 3], 52)).unwrap();
        let r = seeded_uniform(&[2, 4, 5, 4], 53);
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
        let x0 = seeded_uniform(&[b, c, h, h], 6);
        let w0 = seeded_uniform(&[o, c, k, k], 7);
        let q = seeded_uniform(&[b, o, h, h], 8);
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
            let d = seeded_uniform(base.dims(), dir_seed);
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
}
