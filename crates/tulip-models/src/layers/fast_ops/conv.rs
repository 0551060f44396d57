//! Stride-1 convolution as Candle custom ops: the convolution `F(x, w)`, its input
//! gradient `Gx(g, w)` (a convolution with the transposed, flipped kernel) and its weight
//! gradient `Gw(x, g)`, a family closed under differentiation (with
//! `⟨F(x,w), g⟩ = ⟨x, Gx(g,w)⟩ = ⟨w, Gw(x,g)⟩` each one's derivatives are the other two),
//! so gradients of any order never use Candle's slow CPU `conv_transpose2d`; and the
//! evaluation-mode convolution + batch norm + ReLU for constant models. The arithmetic is
//! in [`direct_conv`].

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};

use std::sync::{Arc, Mutex};

use super::batch_norm::statistics_from_moments;
use super::direct_conv::{self, Isa};
use super::{
    channel_affine_add_relu, contiguous, float_dispatch, parameter_gradients_wanted, relu_mask,
};

/// The shape of a stride-1 convolution: `b` images of `c × h × w`, a `kh × kw` kernel,
/// zero padding `(ph, pw)` on each side.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvGeom {
    pub(super) b: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
}

impl ConvGeom {
    pub(super) fn ho(&self) -> usize {
        self.h + 2 * self.ph + 1 - self.kh
    }
    pub(super) fn wo(&self) -> usize {
        self.w + 2 * self.pw + 1 - self.kw
    }
    pub(super) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// The geometry of `conv(x, w)` for `x: [B, C, H, W]`, `w: [O, C, kh, kw]` and
    /// padding `p` on every side, and `O`; an error naming `what` if they do not fit.
    fn of_forward(x: &[usize], w: &[usize], p: usize, what: &str) -> Result<(Self, usize)> {
        if x.len() != 4
            || w.len() != 4
            || x[1] != w[1]
            || x[2] + 2 * p < w[2]
            || x[3] + 2 * p < w[3]
        {
            bail!("{what}: input {x:?} and kernel {w:?} do not match (padding {p})");
        }
        let geometry = Self {
            b: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            kh: w[2],
            kw: w[3],
            ph: p,
            pw: p,
        };
        Ok((geometry, w[0]))
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
            let (g, o) = ConvGeom::of_forward(d1, d2, p, "conv")?;
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
                (arg2.track_op() && parameter_gradients_wanted())
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

/// Per-channel batch mean and biased variance of an output, as batch norm's
/// [`batch_statistics`](super::batch_statistics) computes them.
pub type ChannelStatistics = (Vec<f64>, Vec<f64>);

/// [`conv2d_s1`] (CPU only) and its output's [`ChannelStatistics`], taken plane by plane
/// as the convolution writes them: training-mode batch norm, which follows most
/// convolutions, then need not read the output twice more for them.
///
/// # Errors
/// Fails on a shape mismatch, or off the CPU.
pub fn conv2d_s1_statistics(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
) -> Result<(Tensor, ChannelStatistics)> {
    if !x.device().is_cpu() {
        bail!("conv2d_s1_statistics: CPU tensors only");
    }
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
    fn cpu<T: WithDType + direct_conv::Lane>(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let what = "conv2d_s1_statistics";
        let (g, o) = ConvGeom::of_forward(xl.dims(), wl.dims(), self.padding, what)?;
        let (x, w) = (contiguous::<T>(xs, xl)?, contiguous::<T>(ws, wl)?);
        let (y, moments) = direct_conv::conv_then(Isa::Best, &x, &g, &w, o, None, true);
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

/// `relu(conv(x, w)·scale_o + shift_o [+ skip])`: a convolution, evaluation-mode batch
/// norm, the residual connection (a [`CustomOp3`] with `skip`) and ReLU as one op, for a
/// kernel and coefficients that are constants.
#[derive(Debug, Clone)]
struct ConvAffineRelu {
    padding: usize,
    /// Per output channel; `f64`, exact for either float type.
    scale: Vec<f64>,
    shift: Vec<f64>,
}

impl ConvAffineRelu {
    fn cpu<T: WithDType + direct_conv::Lane>(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        skip: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) = ConvGeom::of_forward(xl.dims(), wl.dims(), self.padding, "conv_affine_relu")?;
        if self.scale.len() != o || self.shift.len() != o {
            bail!(
                "conv_affine_relu: {} scales and {} shifts for {o} output channels",
                self.scale.len(),
                self.shift.len()
            );
        }
        let out_dims = [g.b, o, g.ho(), g.wo()];
        let skip = match skip {
            Some((_, sl)) if sl.dims() != out_dims => bail!(
                "conv_affine_relu: residual {:?} for an output {out_dims:?}",
                sl.dims()
            ),
            Some((ss, sl)) => Some(contiguous::<T>(ss, sl)?),
            None => None,
        };
        let (x, w) = (contiguous::<T>(xs, xl)?, contiguous::<T>(ws, wl)?);
        let scale: Vec<T> = self.scale.iter().map(|&v| T::from_f64(v)).collect();
        let shift: Vec<T> = self.shift.iter().map(|&v| T::from_f64(v)).collect();
        let epilogue = direct_conv::AffineRelu {
            scale: &scale,
            shift: &shift,
            skip: skip.as_deref(),
        };
        let (y, _) = direct_conv::conv_then(Isa::Best, &x, &g, &w, o, Some(epilogue), false);
        Ok((T::to_cpu_storage_owned(y), Shape::from(&out_dims[..])))
    }

    /// The gradients of `x` and the residual (the kernel and coefficients are constants:
    /// [`conv2d_affine_relu`] builds this op only for them): with `m = g·[y > 0]`,
    /// `Gx(scale·m, w)` and `m`, built from differentiable ops.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        skip: Option<&Tensor>,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if w.track_op() {
            bail!("conv_affine_relu: the kernel must be a constant");
        }
        let masked = relu_mask(grad, y)?;
        // Gx(m·scale, w) = Gx(m, w·scale): the scale goes into the small kernel (per output
        // channel) instead of a pass over the gradient.
        let scale = Tensor::new(self.scale.as_slice(), w.device())?
            .to_dtype(w.dtype())?
            .reshape((w.dim(0)?, 1, 1, 1))?;
        let dx = x
            .track_op()
            .then(|| conv2d_grad_input(&masked, &w.broadcast_mul(&scale)?, self.padding))
            .transpose()?;
        let dskip = skip.is_some_and(Tensor::track_op).then_some(masked);
        Ok((dx, dskip))
    }
}

impl CustomOp2 for ConvAffineRelu {
    fn name(&self) -> &'static str {
        "tulip-conv2d-affine-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(s1, Self::cpu(self, (s1, l1), (s2, l2), None))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, _) = self.backward(x, w, None, y, grad)?;
        Ok((dx, None))
    }
}

impl CustomOp3 for ConvAffineRelu {
    fn name(&self) -> &'static str {
        "tulip-conv2d-affine-add-relu"
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
        float_dispatch!(s1, Self::cpu(self, (s1, l1), (s2, l2), Some((s3, l3))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        skip: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dskip) = self.backward(x, w, Some(skip), y, grad)?;
        Ok((dx, None, dskip))
    }
}

/// `relu(conv2d_s1(x, w, padding)·scale_o + shift_o [+ skip])` for `scale`, `shift: [O]`
/// and `skip` (the residual connection) of the output's shape: a convolution,
/// evaluation-mode batch norm, residual add and ReLU in one pass over the output, and one
/// node that keeps no pre-activation tensor (less memory for an input-gradient pass).
/// The fused op is used where nothing but `x` and `skip` can need a gradient (the kernel
/// and coefficients are constants: a frozen view, or inference); otherwise, and on other
/// devices, this is the separate ops.
///
/// # Errors
/// Fails on a shape mismatch.
pub fn conv2d_affine_relu(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    skip: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let constants = !(w.track_op() || scale.track_op() || shift.track_op());
    if !x.device().is_cpu() || !constants {
        return channel_affine_add_relu(&conv2d_s1(x, w, padding)?, scale, shift, skip);
    }
    let op = ConvAffineRelu {
        padding,
        scale: scale.to_dtype(DType::F64)?.to_vec1()?,
        shift: shift.to_dtype(DType::F64)?.to_vec1()?,
    };
    match skip {
        None => x.apply_op2(w, op),
        Some(skip) => x.apply_op3(w, skip, op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    use super::super::tests::randn;
    use super::super::{channel_affine, input_gradient_only};
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
            let x = randn(&[b, c, h, w], 8).affine(1.0, offset).unwrap();
            let wt = randn(&[o, c, k, k], 9);
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
        let x = randn(&[2, 6, 5, 5], 4).to_dtype(DType::F32).unwrap();
        let w = randn(&[3, 3, 3, 3], 5).to_dtype(DType::F32).unwrap();
        let xs = x.narrow(1, 2, 3).unwrap();
        let ours = conv2d_s1(&xs, &w, 1).unwrap();
        let theirs = xs.conv2d(&w, 1, 1, 1, 1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
    }

    /// The fused convolution + affine (+ residual) + ReLU against the separate ops: value,
    /// and the gradients of the input and the residual of first and second order; with a
    /// variable kernel it falls back to the separate ops.
    #[test]
    fn conv_affine_relu_matches_the_separate_ops() {
        second_order_on();
        // (8×4: a 1×1 kernel over whole tiles of output.)
        for &(c, o, k, p, h, width) in &[
            (3, 5, 3, 1, 6, 5),
            (4, 8, 1, 0, 6, 5),
            (4, 11, 1, 0, 8, 4),
            (2, 9, 3, 2, 6, 5),
        ] {
            let x0 = randn(&[2, c, h, width], 71);
            let w = randn(&[o, c, k, k], 72);
            let (scale, shift) = (randn(&[o], 73), randn(&[o], 74));
            let dims = conv2d_s1(&x0, &w, p).unwrap().dims().to_vec();
            let (q, r, skip0) = (randn(&dims, 75), randn(&dims, 76), randn(&dims, 77));
            // z, then the gradients of ⟨z, q⟩ and of ⟨z, r⟩ + ‖∂⟨z, q⟩/∂x‖² +
            // ‖∂⟨z, q⟩/∂skip‖² for x, the residual and the kernel (those that have one).
            let run = |fused: bool, w: &Tensor, with_skip: bool| -> Vec<Tensor> {
                let x = Var::from_tensor(&x0).unwrap();
                let x = x.as_tensor();
                let skip = Var::from_tensor(&skip0).unwrap();
                let skip = with_skip.then_some(skip.as_tensor());
                let z = if fused {
                    conv2d_affine_relu(x, w, &scale, &shift, skip, p).unwrap()
                } else {
                    let y = channel_affine(&conv2d_s1(x, w, p).unwrap(), &scale, &shift).unwrap();
                    match skip {
                        Some(skip) => (y + skip).unwrap().relu().unwrap(),
                        None => y.relu().unwrap(),
                    }
                };
                let inner = (&z * &q).unwrap().sum_all().unwrap().backward().unwrap();
                let mut first: Vec<Tensor> = [Some(x), skip]
                    .into_iter()
                    .flatten()
                    .map(|v| inner.get(v).unwrap().clone())
                    .collect();
                let mut l = (&z * &r).unwrap().sum_all().unwrap();
                for gv in &first {
                    l = (l + gv.sqr().unwrap().sum_all().unwrap()).unwrap();
                }
                let g = l.backward().unwrap();
                let mut out = vec![z];
                out.append(&mut first);
                out.extend(
                    [Some(x), skip]
                        .into_iter()
                        .flatten()
                        .map(|v| g.get(v).unwrap().clone()),
                );
                out.extend(g.get(w).cloned());
                out
            };
            for with_skip in [false, true] {
                let n = if with_skip { 5 } else { 3 };
                let (ours, theirs) = (run(true, &w, with_skip), run(false, &w, with_skip));
                assert_eq!(ours.len(), n, "a constant kernel gets no gradient");
                for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                    let d = max_diff(a, b);
                    assert!(
                        d < 1e-12,
                        "c={c} o={o} k={k} skip={with_skip}: output {i}: {d:e}"
                    );
                }
                let wv = Var::from_tensor(&w).unwrap();
                let (ours, theirs) = (
                    run(true, wv.as_tensor(), with_skip),
                    run(false, wv.as_tensor(), with_skip),
                );
                assert_eq!(ours.len(), n + 1, "a variable kernel keeps its gradient");
                for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                    assert!(
                        max_diff(a, b) < 1e-12,
                        "variable kernel, skip={with_skip}: output {i}"
                    );
                }
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
}
