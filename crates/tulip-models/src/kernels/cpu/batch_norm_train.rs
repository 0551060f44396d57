//! Training-mode batch normalisation as one op: `y = (x − μ)·σ⁻¹·γ + β` with the batch's
//! per-channel mean `μ` and biased variance `σ²`.
//!
//! Built from the per-channel ops, the layer recorded five full-size nodes per call, and
//! Candle's backward pass then made some twenty passes over the activations (each node's
//! gradient materialised, zero-filled and added). As one op the forward pass reads `x`
//! once and writes `y` once (the statistics, two more passes, are taken by the convolution
//! that writes `x`, plane by plane as it writes it; `statistics::batch_statistics` takes
//! the same of other inputs), and a first-order backward pass reads `dy` and `x` twice and
//! writes `dx` once, with the closed form
//!
//! ```text
//! dβ = Σ dy,   dγ = Σ dy·x̂,   dx = γσ⁻¹·(dy − dβ/N − x̂·dγ/N),   x̂ = (x − μ)σ⁻¹.
//! ```
//!
//! That fused backward returns plain tensors, so it is taken only inside
//! [`first_order_gradients`](crate::first_order_gradients). Everywhere else `dx` is a
//! second op, [`BatchNormInputGradient`] of `dy`, `x` and `γ` (with `σ` recomputed from
//! `x`), whose own backward is exact; `dγ` and `dβ` are composed from the differentiable
//! per-channel ops. So gradients of gradients stay exact.

use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor, WithDType,
};

use super::channel::{centre, channel_dot, channel_sum};
use super::relu::{relu_value, through_relu};
use super::storage::{batch_channels_positions, contiguous, float_dispatch};
use super::threads::{channel_totals, map_planes, plane, planes_on_threads, zip_planes};
use crate::kernels::grad_mode::{first_order_only, parameter_gradients_wanted};

/// Per channel `(μ, a, β)` rounded to the data's type, as the forward pass uses them.
fn rounded_coefficients<T: WithDType>(affine: &[[f64; 3]]) -> Vec<(T, T, T)> {
    let round = T::from_f64;
    affine
        .iter()
        .map(|&[m, a, s]| (round(m), round(a), round(s)))
        .collect()
}

/// Whether the forward pass's ReLU let an element through, from its `xc = x − μ` in a
/// channel with `(μ, a, β)`: where its input `xc·a + β` was positive, in that pass's
/// arithmetic (so the mask is bit for bit the forward's); everywhere without the ReLU.
fn relu_passes<T: WithDType>((_, a, s): (T, T, T), relu: bool) -> impl Fn(T) -> bool + Copy {
    move |xc| !relu || xc * a + s > T::zero()
}

/// `(dy, xc)` of an element `(g, x)` of a channel with `(μ, a, β)`: `xc = x − μ`, and
/// `dy = g` where the ReLU [`relu_passes`], 0 elsewhere. (`move`, so that the loops it is
/// inlined into keep the coefficients in registers: a captured reference is reloaded for
/// every element, unvectorised.)
fn mask_and_centre<T: WithDType>(affine: (T, T, T), relu: bool) -> impl Fn(T, T) -> (T, T) + Copy {
    let (m, open) = (affine.0, relu_passes(affine, relu));
    move |g, x| {
        let xc = x - m;
        (if open(xc) { g } else { T::zero() }, xc)
    }
}

/// `dx = a·dy + k·xc + z` element by element, `(dy, xc) = mask_and_centre(g, x)`: batch
/// norm's input gradient (a piece of a plane of it) once its channel's coefficients
/// `(a, k, z)` are known, in the first-order backward pass and in the input-gradient op
/// alike.
#[inline(always)]
fn input_gradient_plane<T: WithDType>(
    dx: &mut [T],
    (g, x): (&[T], &[T]),
    (a, k, z): (T, T, T),
    mask_and_centre: impl Fn(T, T) -> (T, T),
) {
    for (dx, (&g, &x)) in dx.iter_mut().zip(g.iter().zip(x)) {
        let (dy, xc) = mask_and_centre(g, x);
        *dx = dy * a + xc * k + z;
    }
}

/// One plane's `[Σdy, Σdy·xc, Σxc², Σxc]` and, if `WEIGHTED`, `[Σḡ, Σḡ·dy, Σḡ·xc]` (zeros
/// otherwise), with `(dy, xc) = mask_and_centre(g, x)` element by element: one pass over the inputs
/// (forming `dy` and `xc` into buffers first, then summing them, took two more), eight
/// accumulators each so that it vectorises, in f64.
fn plane_sums<T: WithDType, const WEIGHTED: bool>(
    g: &[T],
    x: &[T],
    gr: &[T],
    mask_and_centre: impl Fn(T, T) -> (T, T),
) -> [f64; 7] {
    let mut acc = [[T::zero(); 8]; 7];
    let chunks = g
        .chunks_exact(8)
        .zip(x.chunks_exact(8))
        .zip(gr.chunks_exact(8));
    for ((cg, cx), cr) in chunks {
        let (cg, cx, cr) = (as_array_of_8(cg), as_array_of_8(cx), as_array_of_8(cr));
        for k in 0..8 {
            let (dy, xc) = mask_and_centre(cg[k], cx[k]);
            acc[0][k] += dy;
            acc[1][k] += dy * xc;
            acc[2][k] += xc * xc;
            acc[3][k] += xc;
            if WEIGHTED {
                acc[4][k] += cr[k];
                acc[5][k] += cr[k] * dy;
                acc[6][k] += cr[k] * xc;
            }
        }
    }
    let mut sums = acc.map(|a| a.iter().map(|v| v.to_f64()).sum::<f64>());
    let tail = g.len() / 8 * 8;
    for ((&g, &x), &r) in g[tail..].iter().zip(&x[tail..]).zip(&gr[tail..]) {
        let (dy, xc) = mask_and_centre(g, x);
        let (dy, xc, r) = (dy.to_f64(), xc.to_f64(), r.to_f64());
        sums[0] += dy;
        sums[1] += dy * xc;
        sums[2] += xc * xc;
        sums[3] += xc;
        if WEIGHTED {
            sums[4] += r;
            sums[5] += r * dy;
            sums[6] += r * xc;
        }
    }
    sums
}

/// A chunk of `chunks_exact(8)` as an array of 8, so that its loop needs no bounds checks.
fn as_array_of_8<T>(chunk: &[T]) -> &[T; 8] {
    chunk.try_into().expect("a chunk of 8")
}

/// `y = (x − μ)·σ⁻¹·γ + β` for `x: [B, C, …]`, `weight` (γ) and `bias` (β) of `[C]`, with
/// `μ`, `σ² = var` the batch statistics of `x` (from `statistics::batch_statistics`)
/// and `σ = √(var + eps)`; followed by a ReLU if `relu`.
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: Vec<f64>,
    var: &[f64],
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let inv_std = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let op = BatchNormTrain {
        mean,
        inv_std,
        eps,
        relu,
    };
    x.apply_op3(weight, bias, op)
}

struct BatchNormTrain {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    eps: f64,
    relu: bool,
}

impl BatchNormTrain {
    /// Per channel `[μ, γσ⁻¹, β]`: the forward pass is `y = (x − μ)·γσ⁻¹ + β` with these,
    /// rounded to the data's type.
    fn affine(&self, weight: &[f64], bias: &[f64]) -> Vec<[f64; 3]> {
        let channels = self
            .mean
            .iter()
            .zip(&self.inv_std)
            .zip(weight.iter().zip(bias));
        channels.map(|((&m, &s), (&w, &b))| [m, w * s, b]).collect()
    }

    fn forward<T: WithDType>(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        (bs, bl): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, sz) = batch_channels_positions(xl.dims())?;
        let (x, w, bias) = (
            contiguous::<T>(xs, xl)?,
            contiguous::<T>(ws, wl)?,
            contiguous::<T>(bs, bl)?,
        );
        if w.len() != c || bias.len() != c || self.mean.len() != c {
            bail!(
                "batch norm: weight/bias/statistics of {}/{}/{} for {c} channels",
                w.len(),
                bias.len(),
                self.mean.len()
            );
        }
        // y = (x − μ)·a + β with a = γσ⁻¹: centred first, as the unfused layer did, so
        // that a large mean does not cost precision (x·a + (β − μ·a) loses ~log₂(|μ|/σ)
        // bits, enough to fail the penalty's finite-difference test).
        let to_f64 = |v: &[T]| v.iter().map(|v| v.to_f64()).collect::<Vec<_>>();
        let coefs = rounded_coefficients::<T>(&self.affine(&to_f64(&w), &to_f64(&bias)));
        let relu = self.relu;
        let y = map_planes(&x[..b * c * sz], sz, |i, x, y| {
            let (m, a, s) = coefs[i % c];
            let values = x.iter().map(|&v| (v - m) * a + s);
            for (y, v) in y.iter_mut().zip(values) {
                *y = if relu { relu_value(v, T::zero()) } else { v };
            }
        });
        Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
    }

    /// The closed-form gradients `(dx, dγ, dβ)` in two passes, as plain tensors. With the
    /// ReLU fused, `dy` is masked plane by plane as it is read, the mask recomputed from
    /// `x` in the forward pass's arithmetic (reading the output for it instead made the
    /// passes read three full-size tensors, not two).
    fn fused_backward<T: WithDType>(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, c, sz) = batch_channels_positions(x.dims())?;
        let n = (b * sz).max(1) as f64;
        let to_f64 = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
        let w = to_f64(weight)?;
        let affine = rounded_coefficients::<T>(&self.affine(&w, &to_f64(bias)?));
        let (x, dy) = (x.contiguous()?, dy.contiguous()?);
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(gs)) = (&*xs, &*gs) else {
            bail!("batch norm: fused backward on the CPU only");
        };
        let (x, g) = (contiguous::<T>(xs, xl)?, contiguous::<T>(gs, gl)?);
        // Σ dy and Σ dy·(x − μ), per channel, in one pass over each plane.
        let sums = channel_totals((b, c), |i| {
            let (g, x) = (plane(&g, sz, i), plane(&x, sz, i));
            let p = plane_sums::<T, false>(g, x, x, mask_and_centre(affine[i % c], self.relu));
            [p[0], p[1]]
        });
        let (dbeta, dot): (Vec<f64>, Vec<f64>) = sums.into_iter().map(|[s, d]| (s, d)).unzip();
        let dgamma: Vec<f64> = dot.iter().zip(&self.inv_std).map(|(d, s)| d * s).collect();
        // dx = a·dy + k·(x − μ) + z, a = γσ⁻¹, k = −a·dγ·σ⁻¹/N, z = −a·dβ/N.
        let coef = |ci: usize| {
            let a = w[ci] * self.inv_std[ci];
            let k = -a * dgamma[ci] * self.inv_std[ci] / n;
            let z = -a * dbeta[ci] / n;
            (T::from_f64(a), T::from_f64(k), T::from_f64(z))
        };
        let coefs: Vec<_> = (0..c).map(coef).collect();
        let dx = zip_planes(&g, &x, sz, |i, g, x, dx| {
            input_gradient_plane(
                dx,
                (g, x),
                coefs[i % c],
                mask_and_centre(affine[i % c], self.relu),
            );
        });
        let cpu = Device::Cpu;
        Ok((
            Tensor::from_vec(dx, xl.shape(), &cpu)?,
            Tensor::from_vec(dgamma, c, &cpu)?.to_dtype(T::DTYPE)?,
            Tensor::from_vec(dbeta, c, &cpu)?.to_dtype(T::DTYPE)?,
        ))
    }

    /// The same gradients as differentiable ops: `dx` by [`BatchNormInputGradient`] (from
    /// `dy` before the ReLU's mask), `dγ` and `dβ` (when wanted) composed from per-channel
    /// ops, with `μ` and `σ` recomputed from `x`.
    fn differentiable_backward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        (dy, relu_output): (&Tensor, &Tensor),
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let to_f64 = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
        let op = BatchNormInputGradient {
            eps: self.eps,
            affine: self.affine(&to_f64(weight)?, &to_f64(bias)?),
            relu: self.relu,
        };
        let dx = dy.apply_op3(x, weight, op)?;
        if !parameter_gradients_wanted() {
            return Ok((dx, None, None));
        }
        let dy = &through_relu(self.relu, dy, relu_output)?;
        let centred = centre(x)?;
        let c = x.dim(1)?;
        let n = (x.elem_count() / c.max(1)) as f64;
        let var = (channel_dot(&centred, &centred)? / n)?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let dgamma = (channel_dot(dy, &centred)? * &inv_std)?;
        Ok((dx, Some(dgamma), Some(channel_sum(dy)?)))
    }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "tulip-batch-norm-train"
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
        float_dispatch!(s1, Self::forward(self, (s1, l1), (s2, l2), (s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgamma, dbeta) = if first_order_only() {
            let (dx, dgamma, dbeta) = match x.dtype() {
                DType::F32 => self.fused_backward::<f32>(x, weight, bias, dy)?,
                _ => self.fused_backward::<f64>(x, weight, bias, dy)?,
            };
            (dx, Some(dgamma), Some(dbeta))
        } else {
            self.differentiable_backward(x, weight, bias, (dy, res))?
        };
        Ok((
            x.track_op().then_some(dx),
            dgamma.filter(|_| weight.track_op()),
            dbeta.filter(|_| bias.track_op()),
        ))
    }
}

/// Batch norm's input gradient as a function of the gradient `g` reaching its output,
/// its input `x` and its weight `γ`, with `dy = g·[y > 0]` (`y` the forward's output,
/// when the ReLU is fused; `dy = g` otherwise) and `xc = x − μ`:
///
/// ```text
/// dx = a·(dy − m_g − s²·m_gx·xc),   a = γs,  s = (v + ε)^(−1/2),
/// m_g = mean(dy),  m_gx = mean(dy·xc),  v = mean(xc²),
/// ```
///
/// means per channel over the batch and positions. It is the one node of a batch norm in
/// the graph of an input gradient that is differentiated again (the Lipschitz
/// penalties'). Composed from a ReLU mask, a centring and per-channel ops instead, `dy`
/// and `xc` each fed three nodes, and the outer backward pass made about fourteen
/// full-size passes and four accumulations per layer; this op's backward reads its
/// inputs twice and writes two gradients, with the closed form (`ḡ` the gradient
/// reaching `dx`, `N` the elements per channel, `G0 = Σḡ`, `G1 = Σḡ·dy`, `G2 = Σḡ·xc`):
///
/// ```text
/// ∂/∂dy = a·(ḡ − G0/N − s²·xc·G2/N)                        (∂/∂g: that, masked)
/// ∂/∂xc = −γs³·(m_gx·ḡ + (G2/N)·dy + ((G1 − m_g·G0)/N − 3s²·m_gx·G2/N)·xc)
/// ∂/∂x  = ∂/∂xc − mean(∂/∂xc)                                (μ is the mean of x)
/// ∂/∂γ  = s·(G1 − m_g·G0) − s³·m_gx·G2
/// ```
///
/// The mask is piecewise constant (no gradient, as for any ReLU). `μ` and the mask come
/// from the forward pass ([`BatchNormTrain::affine`]), so `xc` and the mask are bit for
/// bit the forward's. The gradients are plain tensors: second derivatives through this
/// op are exact, third derivatives are not available.
struct BatchNormInputGradient {
    eps: f64,
    /// The forward's per-channel `[μ, γσ⁻¹, β]`.
    affine: Vec<[f64; 3]>,
    relu: bool,
}

/// The per-channel statistics of `dy` and `xc` the op and its gradient use.
struct InputGradientStats {
    /// `s = (v + ε)^(−1/2)`.
    s: f64,
    m_g: f64,
    m_gx: f64,
}

/// Plane by plane, the op's `dy` and `xc` formed from its inputs.
struct InputGradientPlanes<'a, T> {
    g: &'a [T],
    x: &'a [T],
    /// The `[B, C, S]` dimensions.
    b: usize,
    c: usize,
    sz: usize,
    /// `γ`, in f64.
    gamma: Vec<f64>,
    /// Per channel `(μ, γσ⁻¹, β)` in `T`, as the forward pass used them.
    affine: Vec<(T, T, T)>,
    relu: bool,
}

impl<T: WithDType> InputGradientPlanes<'_, T> {
    /// [`mask_and_centre`] for channel `ci`.
    fn mask_and_centre(&self, ci: usize) -> impl Fn(T, T) -> (T, T) + Copy {
        mask_and_centre(self.affine[ci], self.relu)
    }

    /// `[Σdy, Σdy·xc, Σxc², Σxc]` per channel, and with `gr` (the gradient reaching the
    /// op's output) also `[Σḡ, Σḡ·dy, Σḡ·xc]`, in f64.
    fn channel_sums(&self, gr: Option<&[T]>) -> Vec<[f64; 7]> {
        channel_totals((self.b, self.c), |i| {
            let mask_and_centre = self.mask_and_centre(i % self.c);
            let (g, x) = (plane(self.g, self.sz, i), plane(self.x, self.sz, i));
            match gr {
                Some(gr) => plane_sums::<T, true>(g, x, plane(gr, self.sz, i), mask_and_centre),
                None => plane_sums::<T, false>(g, x, x, mask_and_centre),
            }
        })
    }
}

impl BatchNormInputGradient {
    fn stats(&self, sums: &[f64; 7], n: f64) -> InputGradientStats {
        InputGradientStats {
            s: 1.0 / (sums[2] / n + self.eps).sqrt(),
            m_g: sums[0] / n,
            m_gx: sums[1] / n,
        }
    }

    /// The op's inputs as planes, checked against each other.
    fn planes<'a, T: WithDType>(
        &self,
        (g, gl): (&'a [T], &Layout),
        (x, xl): (&'a [T], &Layout),
        w: &[T],
    ) -> Result<InputGradientPlanes<'a, T>> {
        let (b, c, sz) = batch_channels_positions(gl.dims())?;
        if gl.dims() != xl.dims() || w.len() != c || self.affine.len() != c {
            bail!(
                "batch norm input gradient: shapes {:?} and {:?}, weight of {} and statistics of {}",
                gl.dims(),
                xl.dims(),
                w.len(),
                self.affine.len()
            );
        }
        Ok(InputGradientPlanes {
            g,
            x,
            b,
            c,
            sz,
            gamma: w.iter().map(|v| v.to_f64()).collect(),
            affine: rounded_coefficients(&self.affine),
            relu: self.relu,
        })
    }

    fn forward<T: WithDType>(
        &self,
        (gs, gl): (&CpuStorage, &Layout),
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x, w) = (
            contiguous::<T>(gs, gl)?,
            contiguous::<T>(xs, xl)?,
            contiguous::<T>(ws, wl)?,
        );
        let planes = self.planes((&g, gl), (&x, xl), &w)?;
        let (b, c, sz) = (planes.b, planes.c, planes.sz);
        let n = (b * sz).max(1) as f64;
        let sums = planes.channel_sums(None);
        // dx = dy·a + xc·k + z: the arithmetic of the fused first-order backward.
        let coefs: Vec<(T, T, T)> = sums
            .iter()
            .zip(&planes.gamma)
            .map(|(sums, &gamma)| {
                let st = self.stats(sums, n);
                let a = gamma * st.s;
                let k = -a * st.s * st.s * st.m_gx;
                (T::from_f64(a), T::from_f64(k), T::from_f64(-a * st.m_g))
            })
            .collect();
        let dx = zip_planes(&g[..b * c * sz], &x[..b * c * sz], sz, |i, g, x, dx| {
            input_gradient_plane(dx, (g, x), coefs[i % c], planes.mask_and_centre(i % c));
        });
        Ok((T::to_cpu_storage_owned(dx), gl.shape().clone()))
    }

    /// `(∂/∂g, ∂/∂x, ∂/∂γ)` of `Σ ḡ·dx` (see the type's docs).
    fn gradients<T: WithDType>(
        &self,
        g: &Tensor,
        x: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let shape = g.shape().clone();
        let (g, x, w, grad) = (
            g.contiguous()?,
            x.contiguous()?,
            weight.contiguous()?,
            grad.contiguous()?,
        );
        let (g, x) = (g.storage_and_layout(), x.storage_and_layout());
        let (w, gr) = (w.storage_and_layout(), grad.storage_and_layout());
        let (Storage::Cpu(gs), Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(grs)) =
            (&*g.0, &*x.0, &*w.0, &*gr.0)
        else {
            bail!("batch norm input gradient: on the CPU only");
        };
        let (gd, xd) = (contiguous::<T>(gs, g.1)?, contiguous::<T>(xs, x.1)?);
        let (wd, gr) = (contiguous::<T>(ws, w.1)?, contiguous::<T>(grs, gr.1)?);
        let planes = self.planes((&gd, g.1), (&xd, x.1), &wd)?;
        let (b, c, sz) = (planes.b, planes.c, planes.sz);
        let n = (b * sz).max(1) as f64;
        let sums = planes.channel_sums(Some(&gr));
        let mut dgamma = Vec::with_capacity(c);
        let mut coefs = Vec::with_capacity(c);
        for (sums, &gamma) in sums.iter().zip(&planes.gamma) {
            let st = self.stats(sums, n);
            let [_, _, _, sum_xc, g0, g1, g2] = *sums;
            let (s, s2) = (st.s, st.s * st.s);
            let a = gamma * s;
            let c3 = -gamma * s * s2;
            dgamma.push(s * (g1 - st.m_g * g0) - s * s2 * st.m_gx * g2);
            // ∂/∂xc = ḡ·p + dy·q + xc·r, less its mean for ∂/∂x.
            let p = c3 * st.m_gx;
            let q = c3 * g2 / n;
            let r = c3 * ((g1 - st.m_g * g0) / n - 3.0 * s2 * st.m_gx * g2 / n);
            let mean = (p * g0 + q * sums[0] + r * sum_xc) / n;
            // ∂/∂dy = ḡ·a + xc·k + z
            coefs.push([a, -a * s2 * g2 / n, -a * g0 / n, p, q, r, -mean].map(T::from_f64));
        }
        let [dg, dx] = planes_on_threads(b * c, sz, |i, [dg, dx]| {
            let [a, k, z, p, q, r, t] = coefs[i % c];
            let (mask_and_centre, open) = (
                planes.mask_and_centre(i % c),
                relu_passes(planes.affine[i % c], planes.relu),
            );
            let (g, x, gr) = (plane(&gd, sz, i), plane(&xd, sz, i), plane(&gr, sz, i));
            let inputs = g.iter().zip(x).zip(gr);
            for ((dg, dx), ((&g, &x), &gr)) in dg.iter_mut().zip(dx.iter_mut()).zip(inputs) {
                let (dy, xc) = mask_and_centre(g, x);
                // Masked as dy was.
                *dg = if open(xc) {
                    gr * a + xc * k + z
                } else {
                    T::zero()
                };
                *dx = gr * p + dy * q + xc * r + t;
            }
        });
        let cpu = &Device::Cpu;
        Ok((
            Tensor::from_vec(dg, &shape, cpu)?,
            Tensor::from_vec(dx, &shape, cpu)?,
            Tensor::from_vec(dgamma, c, cpu)?.to_dtype(T::DTYPE)?,
        ))
    }
}

impl CustomOp3 for BatchNormInputGradient {
    fn name(&self) -> &'static str {
        "tulip-batch-norm-input-gradient"
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
        float_dispatch!(s1, Self::forward(self, (s1, l1), (s2, l2), (s3, l3)))
    }

    fn bwd(
        &self,
        g: &Tensor,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dg, dx, dgamma) = match g.dtype() {
            DType::F32 => self.gradients::<f32>(g, x, weight, grad)?,
            _ => self.gradients::<f64>(g, x, weight, grad)?,
        };
        Ok((
            g.track_op().then_some(dg),
            x.track_op().then_some(dx),
            weight.track_op().then_some(dgamma),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values::seeded_uniform;
    use candle_core::Var;

    /// The op for `x`: its mean as `μ`, and a ReLU mask `(x − μ)·a + β > 0` if `relu`.
    fn op_for(x: &Tensor, relu: bool) -> BatchNormInputGradient {
        let mean = x.mean_keepdim(0).unwrap().mean_keepdim(2).unwrap();
        let mean = mean.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        BatchNormInputGradient {
            eps: 0.3,
            affine: mean
                .iter()
                .zip([0.9, -1.4])
                .map(|(&m, a)| [m, a, 0.2])
                .collect(),
            relu,
        }
    }

    /// The op's gradients with respect to `g`, `x` and `γ` against central differences of
    /// `L = Σ ḡ·dx`, in f64, with and without the ReLU mask; `μ` is recomputed from each
    /// perturbed `x`, as the op assumes. The data make every term of the closed form
    /// count: `x` of mean far from 0 and variance near 1 (so that `ε` matters little),
    /// `g` correlated with `x` (so that `m_gx` is far from 0), `ḡ` with both.
    #[test]
    fn input_gradient_op_has_the_gradients_of_central_differences() {
        let shape = [3, 2, 5];
        let x = ((seeded_uniform(&shape, 1) * 1.7).unwrap() + 0.6).unwrap();
        let g = ((seeded_uniform(&shape, 2) + (&x * 0.8).unwrap()).unwrap() + 0.4).unwrap();
        let gbar = ((seeded_uniform(&shape, 3) + (&g * 0.5).unwrap()).unwrap()
            - (&x * 0.7).unwrap())
        .unwrap();
        let gamma = Tensor::new(&[1.3f64, -0.6], &Device::Cpu).unwrap();
        for relu in [false, true] {
            let loss = |g: &Tensor, x: &Tensor, gamma: &Tensor| -> f64 {
                let dx = g.apply_op3(x, gamma, op_for(x, relu)).unwrap();
                (dx * &gbar)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap()
            };
            let vars = [&g, &x, &gamma].map(|t| Var::from_tensor(t).unwrap());
            let dx = vars[0]
                .apply_op3(&vars[1], &vars[2], op_for(&x, relu))
                .unwrap();
            let grads = (dx * &gbar).unwrap().sum_all().unwrap().backward().unwrap();
            let h = 1e-5;
            for (which, var) in vars.iter().enumerate() {
                let ours = grads.get(var).unwrap().flatten_all().unwrap();
                let ours = ours.to_vec1::<f64>().unwrap();
                let base = var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                for (i, &analytic) in ours.iter().enumerate() {
                    let at = |delta: f64| {
                        let mut v = base.clone();
                        v[i] += delta;
                        let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                        let mut args = [g.clone(), x.clone(), gamma.clone()];
                        args[which] = t;
                        loss(&args[0], &args[1], &args[2])
                    };
                    let numeric = (at(h) - at(-h)) / (2.0 * h);
                    assert!(
                        (analytic - numeric).abs() < 1e-7 * (1.0 + numeric.abs()),
                        "relu {relu}, argument {which}, element {i}: {analytic} against {numeric}"
                    );
                }
            }
        }
        // The op's value is batch norm's input gradient, term by term.
        for relu in [false, true] {
            let n = 15.0;
            let dims: &[usize] = &[0, 2];
            let mean = |t: &Tensor| (t.sum_keepdim(dims).unwrap() / n).unwrap();
            let xc = x.broadcast_sub(&mean(&x)).unwrap();
            let dy = if relu {
                let a = Tensor::new(&[0.9f64, -1.4], &Device::Cpu).unwrap();
                let pre = xc.broadcast_mul(&a.reshape((1, 2, 1)).unwrap()).unwrap() + 0.2;
                let mask = pre.unwrap().gt(0.0).unwrap().to_dtype(DType::F64).unwrap();
                (&g * mask).unwrap()
            } else {
                g.clone()
            };
            let s = (mean(&xc.sqr().unwrap()) + 0.3)
                .unwrap()
                .sqrt()
                .unwrap()
                .recip()
                .unwrap();
            let g3 = gamma.reshape((1, 2, 1)).unwrap();
            let m_gx = mean(&(&dy * &xc).unwrap());
            let inner = dy
                .broadcast_sub(&mean(&dy))
                .unwrap()
                .sub(
                    &xc.broadcast_mul(&(s.sqr().unwrap() * m_gx).unwrap())
                        .unwrap(),
                )
                .unwrap();
            let expected = inner.broadcast_mul(&g3.broadcast_mul(&s).unwrap()).unwrap();
            let dx = g.apply_op3(&x, &gamma, op_for(&x, relu)).unwrap();
            let diff = (dx - expected).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f64>().unwrap() < 1e-12, "relu {relu}");
        }
    }
}
