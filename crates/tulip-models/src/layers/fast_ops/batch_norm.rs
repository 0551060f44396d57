//! Training-mode batch normalisation as one op: `y = (x − μ)·σ⁻¹·γ + β` with the batch's
//! per-channel mean `μ` and biased variance `σ²`.
//!
//! Built from the per-channel ops, the layer recorded five full-size nodes per call, and
//! Candle's backward pass then made some twenty passes over the activations (each node's
//! gradient materialised, zero-filled and added). As one op the forward pass reads `x`
//! three times and writes `y` once, and a first-order backward pass reads `dy` and `x`
//! twice and writes `dx` once, with the closed form
//!
//! ```text
//! dβ = Σ dy,   dγ = Σ dy·x̂,   dx = γσ⁻¹·(dy − dβ/N − x̂·dγ/N),   x̂ = (x − μ)σ⁻¹.
//! ```
//!
//! That fused backward returns plain tensors, so it is taken only inside
//! [`first_order_gradients`](super::first_order_gradients). Everywhere else `dx` is a
//! second op, [`BatchNormInputGradient`] of `dy` and `x − μ` (with `μ` and `σ` recomputed
//! from `x`), whose own backward is exact; `dγ` and `dβ` are composed from the
//! differentiable per-channel ops. So gradients of gradients stay exact.

use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor, WithDType,
};

use super::{
    bcs, block_sum, centre, channel_dot, channel_mean, channel_planes, channel_sum, contiguous,
    first_order_only, parameter_gradients_wanted, per_channel, relu_value, through_relu,
};

/// `Σ u·(v − m)` with eight independent accumulators (so it vectorises), returned in f64.
fn centred_dot<T: WithDType>(u: &[T], v: &[T], m: T) -> f64 {
    let zero = T::from_f64(0.0);
    let mut acc = [zero; 8];
    for (cu, cv) in u.chunks_exact(8).zip(v.chunks_exact(8)) {
        for ((a, &x), &y) in acc.iter_mut().zip(cu).zip(cv) {
            *a += x * (y - m);
        }
    }
    let tail = u.len() / 8 * 8;
    let rest: f64 = u[tail..]
        .iter()
        .zip(&v[tail..])
        .map(|(&x, &y)| (x * (y - m)).to_f64())
        .sum();
    acc.iter().map(|a| a.to_f64()).sum::<f64>() + rest
}

/// `[Σu, Σu·v, Σv²]` over one plane of `u` and `v`, eight accumulators each (so that it
/// vectorises), in f64.
fn pair_sums<T: WithDType>(u: &[T], v: &[T]) -> [f64; 3] {
    let zero = T::from_f64(0.0);
    let (mut su, mut suv, mut svv) = ([zero; 8], [zero; 8], [zero; 8]);
    for (cu, cv) in u.chunks_exact(8).zip(v.chunks_exact(8)) {
        let (cu, cv): (&[T; 8], &[T; 8]) = (eight(cu), eight(cv));
        for k in 0..8 {
            su[k] += cu[k];
            suv[k] += cu[k] * cv[k];
            svv[k] += cv[k] * cv[k];
        }
    }
    let tail = u.len() / 8 * 8;
    let mut sums = [su, suv, svv].map(|a| a.iter().map(|v| v.to_f64()).sum::<f64>());
    for (&a, &b) in u[tail..].iter().zip(&v[tail..]) {
        let (a, b) = (a.to_f64(), b.to_f64());
        sums[0] += a;
        sums[1] += a * b;
        sums[2] += b * b;
    }
    sums
}

/// A chunk of `chunks_exact(8)` as an array, so that its loop needs no bounds checks.
fn eight<T>(chunk: &[T]) -> &[T; 8] {
    chunk.try_into().expect("a chunk of 8")
}

/// `[Σg, Σg·u, Σg·v]` over one plane of `g`, `u` and `v`, as [`pair_sums`].
fn weighted_sums<T: WithDType>(g: &[T], u: &[T], v: &[T]) -> [f64; 3] {
    let zero = T::from_f64(0.0);
    let (mut sg, mut sgu, mut sgv) = ([zero; 8], [zero; 8], [zero; 8]);
    let chunks = g
        .chunks_exact(8)
        .zip(u.chunks_exact(8))
        .zip(v.chunks_exact(8));
    for ((cg, cu), cv) in chunks {
        let (cg, cu, cv) = (eight(cg), eight(cu), eight(cv));
        for k in 0..8 {
            sg[k] += cg[k];
            sgu[k] += cg[k] * cu[k];
            sgv[k] += cg[k] * cv[k];
        }
    }
    let tail = g.len() / 8 * 8;
    let mut sums = [sg, sgu, sgv].map(|a| a.iter().map(|v| v.to_f64()).sum::<f64>());
    for ((&w, &a), &b) in g[tail..].iter().zip(&u[tail..]).zip(&v[tail..]) {
        let (w, a, b) = (w.to_f64(), a.to_f64(), b.to_f64());
        sums[0] += w;
        sums[1] += w * a;
        sums[2] += w * b;
    }
    sums
}

/// Plane `i` (of `sz` elements) of a `[B, C, S]` tensor's data.
fn plane<T>(t: &[T], sz: usize, i: usize) -> &[T] {
    &t[i * sz..][..sz]
}

/// For each of the `c` channels of a `[B, C, S]` tensor, the sum over its `b` planes of
/// `f(plane index)`, summed in one fixed order.
fn channel_totals<const K: usize>(
    b: usize,
    c: usize,
    f: impl Fn(usize) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    per_channel(c, |ci| {
        (0..b).fold([0.0; K], |mut total, bi| {
            for (t, p) in total.iter_mut().zip(f(bi * c + ci)) {
                *t += p;
            }
            total
        })
    })
}

/// Per-channel batch mean and biased variance of `x: [B, C, …]` (two passes, summed in
/// f64), read straight from its data: not recorded in any graph.
///
/// # Errors
/// Fails if `x` is not a floating-point CPU tensor of rank ≥ 2.
pub fn batch_statistics(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let (storage, layout) = x.storage_and_layout();
    match &*storage {
        Storage::Cpu(s @ CpuStorage::F32(_)) => statistics_cpu::<f32>(s, layout),
        Storage::Cpu(s @ CpuStorage::F64(_)) => statistics_cpu::<f64>(s, layout),
        _ => bail!("batch_statistics: f32 or f64 CPU tensors only"),
    }
}

fn statistics_cpu<T: WithDType>(s: &CpuStorage, l: &Layout) -> Result<(Vec<f64>, Vec<f64>)> {
    let (b, c, sz) = bcs(l.dims())?;
    let x = contiguous::<T>(s, l)?;
    let n = (b * sz).max(1) as f64;
    let planes = |ci: usize| channel_planes(&x, (b, c, sz), ci);
    let stats = per_channel(c, |ci| {
        let mean = channel_mean(&x, (b, c, sz), ci);
        let m = T::from_f64(mean);
        let var = planes(ci).map(|p| centred_dot(p, p, m)).sum::<f64>() / n;
        (mean, var)
    });
    Ok(stats.into_iter().unzip())
}

/// `y = (x − μ)·σ⁻¹·γ + β` for `x: [B, C, …]`, `weight` (γ) and `bias` (β) of `[C]`, with
/// `μ`, `σ² = var` the batch statistics of `x` (from [`batch_statistics`]) and
/// `σ = √(var + eps)`; followed by a ReLU if `relu`. CPU only.
///
/// # Errors
/// Fails on a shape mismatch.
pub fn batch_norm_train(
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
    fn forward<T: WithDType>(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        (bs, bl): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, sz) = bcs(xl.dims())?;
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
        let coefs: Vec<(T, T, T)> = (0..c)
            .map(|ci| {
                let a = w[ci].to_f64() * self.inv_std[ci];
                (T::from_f64(self.mean[ci]), T::from_f64(a), bias[ci])
            })
            .collect();
        let mut y = Vec::with_capacity(b * c * sz);
        let zero = T::from_f64(0.0);
        for (i, plane) in x.chunks_exact(sz.max(1)).enumerate().take(b * c) {
            let (m, a, s) = coefs[i % c];
            let values = plane.iter().map(|&v| (v - m) * a + s);
            if self.relu {
                y.extend(values.map(|v| relu_value(v, zero)));
            } else {
                y.extend(values);
            }
        }
        Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
    }

    /// The closed-form gradients `(dx, dγ, dβ)` in two passes, as plain tensors. With the
    /// ReLU fused (`relu_output` its output), `dy` is masked plane by plane as it is read,
    /// instead of in a full-size pass of its own.
    fn fused_backward<T: WithDType>(
        &self,
        x: &Tensor,
        weight: &Tensor,
        dy: &Tensor,
        relu_output: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, c, sz) = bcs(x.dims())?;
        let n = (b * sz).max(1) as f64;
        let w = weight.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let (x, dy) = (x.contiguous()?, dy.contiguous()?);
        let y = relu_output.unwrap_or(&dy).contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(gs), Storage::Cpu(ys)) = (&*xs, &*gs, &*ys) else {
            bail!("batch norm: fused backward on the CPU only");
        };
        let (x, g) = (contiguous::<T>(xs, xl)?, contiguous::<T>(gs, gl)?);
        let y = relu_output.map(|_| contiguous::<T>(ys, yl)).transpose()?;
        // Plane `i` of dy, through the ReLU's mask (into `buf`) if it has one.
        let dy_plane = |i: usize, buf: &mut Vec<T>| {
            buf.clear();
            let gp = plane(&g, sz, i);
            match &y {
                Some(y) => {
                    let zero = T::from_f64(0.0);
                    let masked = gp.iter().zip(plane(y, sz, i));
                    buf.extend(masked.map(|(&g, &y)| if y > zero { g } else { zero }));
                }
                None => buf.extend_from_slice(gp),
            }
        };
        // Σ dy and Σ dy·(x − μ), per channel.
        let sums = per_channel(c, |ci| {
            let m = T::from_f64(self.mean[ci]);
            let mut gp = Vec::with_capacity(sz);
            let (mut sum, mut dot) = (0.0, 0.0);
            for bi in 0..b {
                dy_plane(bi * c + ci, &mut gp);
                sum += block_sum(&gp);
                dot += centred_dot(&gp, plane(&x, sz, bi * c + ci), m);
            }
            (sum, dot)
        });
        let (dbeta, dot): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
        let dgamma: Vec<f64> = dot.iter().zip(&self.inv_std).map(|(d, s)| d * s).collect();
        // dx = a·dy + k·(x − μ) + z, a = γσ⁻¹, k = −a·dγ·σ⁻¹/N, z = −a·dβ/N.
        let coef = |ci: usize| {
            let a = w[ci] * self.inv_std[ci];
            let k = -a * dgamma[ci] * self.inv_std[ci] / n;
            let z = -a * dbeta[ci] / n;
            (
                T::from_f64(a),
                T::from_f64(k),
                T::from_f64(self.mean[ci]),
                T::from_f64(z),
            )
        };
        let coefs: Vec<_> = (0..c).map(coef).collect();
        let mut dx = Vec::with_capacity(x.len());
        let mut gp = Vec::with_capacity(sz);
        for i in 0..b * c {
            let (a, k, m, z) = coefs[i % c];
            dy_plane(i, &mut gp);
            let terms = plane(&x, sz, i).iter().zip(&gp);
            dx.extend(terms.map(|(&xv, &gv)| gv * a + (xv - m) * k + z));
        }
        let cpu = Device::Cpu;
        Ok((
            Tensor::from_vec(dx, xl.shape(), &cpu)?,
            Tensor::from_vec(dgamma, c, &cpu)?.to_dtype(T::DTYPE)?,
            Tensor::from_vec(dbeta, c, &cpu)?.to_dtype(T::DTYPE)?,
        ))
    }

    /// The same gradients as differentiable ops, `μ` and `σ` recomputed from `x`: `dx` by
    /// [`BatchNormInputGradient`], `dγ` and `dβ` (when wanted) composed from per-channel
    /// ops.
    fn differentiable_backward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let centred = centre(x)?;
        let dx = dy.apply_op3(&centred, weight, BatchNormInputGradient { eps: self.eps })?;
        if !parameter_gradients_wanted() {
            return Ok((dx, None, None));
        }
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
        match s1 {
            CpuStorage::F32(_) => self.forward::<f32>((s1, l1), (s2, l2), (s3, l3)),
            CpuStorage::F64(_) => self.forward::<f64>((s1, l1), (s2, l2), (s3, l3)),
            _ => bail!("batch norm: only f32 and f64 are supported"),
        }
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
            let relu_output = self.relu.then_some(res);
            let (dx, dgamma, dbeta) = match x.dtype() {
                DType::F32 => self.fused_backward::<f32>(x, weight, dy, relu_output)?,
                _ => self.fused_backward::<f64>(x, weight, dy, relu_output)?,
            };
            (dx, Some(dgamma), Some(dbeta))
        } else {
            let dy = &through_relu(self.relu, dy, res)?;
            self.differentiable_backward(x, weight, dy)?
        };
        Ok((
            x.track_op().then_some(dx),
            dgamma.filter(|_| weight.track_op()),
            dbeta.filter(|_| bias.track_op()),
        ))
    }
}

/// Batch norm's input gradient as a function of the gradient `dy` reaching its output
/// (after the ReLU's mask), the centred input `xc = x − μ` and the weight `γ`:
///
/// ```text
/// dx = a·(dy − m_g − s²·m_gx·xc),   a = γs,  s = (v + ε)^(−1/2),
/// m_g = mean(dy),  m_gx = mean(dy·xc),  v = mean(xc²),
/// ```
///
/// means per channel over the batch and positions. It is the one node of a batch norm in
/// the graph of an input gradient that is differentiated again (the Lipschitz
/// penalties'). Composed from per-channel ops instead, `dy` and `xc` each fed three
/// nodes, and the outer backward pass made about a dozen full-size passes and four
/// accumulations per layer; this op's backward reads its inputs twice and writes two
/// gradients, with the closed form (`ḡ` the gradient reaching `dx`, `N` the elements per
/// channel, `G0 = Σḡ`, `G1 = Σḡ·dy`, `G2 = Σḡ·xc`):
///
/// ```text
/// ∂/∂dy = a·(ḡ − G0/N − s²·xc·G2/N)
/// ∂/∂xc = −γs³·(m_gx·ḡ + (G2/N)·dy + ((G1 − m_g·G0)/N − 3s²·m_gx·G2/N)·xc)
/// ∂/∂γ  = s·(G1 − m_g·G0) − s³·m_gx·G2
/// ```
///
/// Those gradients are plain tensors: second derivatives through this op are exact,
/// third derivatives are not available.
struct BatchNormInputGradient {
    eps: f64,
}

/// The per-channel statistics of `dy` and `xc` the op and its gradient use.
struct InputGradientStats {
    gamma: f64,
    /// `s = (v + ε)^(−1/2)`.
    s: f64,
    m_g: f64,
    m_gx: f64,
}

impl BatchNormInputGradient {
    fn stats(&self, sums: [f64; 3], gamma: f64, n: f64) -> InputGradientStats {
        let [sum_g, sum_gx, sum_xx] = sums;
        InputGradientStats {
            gamma,
            s: 1.0 / (sum_xx / n + self.eps).sqrt(),
            m_g: sum_g / n,
            m_gx: sum_gx / n,
        }
    }

    fn forward<T: WithDType>(
        &self,
        (gs, gl): (&CpuStorage, &Layout),
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, sz) = bcs(gl.dims())?;
        if gl.dims() != xl.dims() || wl.dims() != [c] {
            bail!(
                "batch norm input gradient: shapes {:?}, {:?} and weight {:?}",
                gl.dims(),
                xl.dims(),
                wl.dims()
            );
        }
        let (dy, xc, w) = (
            contiguous::<T>(gs, gl)?,
            contiguous::<T>(xs, xl)?,
            contiguous::<T>(ws, wl)?,
        );
        let n = (b * sz).max(1) as f64;
        let sums = channel_totals(b, c, |i| pair_sums(plane(&dy, sz, i), plane(&xc, sz, i)));
        // dx = dy·a + xc·k + z: the arithmetic of the fused first-order backward.
        let coefs: Vec<(T, T, T)> = sums
            .iter()
            .zip(w.iter())
            .map(|(&sums, &gamma)| {
                let st = self.stats(sums, gamma.to_f64(), n);
                let a = st.gamma * st.s;
                let k = -a * st.s * st.s * st.m_gx;
                (T::from_f64(a), T::from_f64(k), T::from_f64(-a * st.m_g))
            })
            .collect();
        let mut dx = Vec::with_capacity(b * c * sz);
        for i in 0..b * c {
            let (a, k, z) = coefs[i % c];
            let values = plane(&dy, sz, i).iter().zip(plane(&xc, sz, i));
            dx.extend(values.map(|(&g, &x)| g * a + x * k + z));
        }
        Ok((T::to_cpu_storage_owned(dx), gl.shape().clone()))
    }

    /// `(∂/∂dy, ∂/∂xc, ∂/∂γ)` of `Σ ḡ·dx` (see the type's docs).
    fn gradients<T: WithDType>(
        &self,
        dy: &Tensor,
        xc: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, c, sz) = bcs(dy.dims())?;
        let n = (b * sz).max(1) as f64;
        let w = weight.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let gr_shape = grad.shape().clone();
        let (dy, xc, grad) = (dy.contiguous()?, xc.contiguous()?, grad.contiguous()?);
        let (dy, xc, gr) = (
            dy.storage_and_layout(),
            xc.storage_and_layout(),
            grad.storage_and_layout(),
        );
        let (Storage::Cpu(dys), Storage::Cpu(xcs), Storage::Cpu(grs)) = (&*dy.0, &*xc.0, &*gr.0)
        else {
            bail!("batch norm input gradient: on the CPU only");
        };
        let (dy, xc, gr) = (
            contiguous::<T>(dys, dy.1)?,
            contiguous::<T>(xcs, xc.1)?,
            contiguous::<T>(grs, gr.1)?,
        );
        let sums = channel_totals(b, c, |i| {
            let [p, q, r] = pair_sums(plane(&dy, sz, i), plane(&xc, sz, i));
            let [u, v, t] = weighted_sums(plane(&gr, sz, i), plane(&dy, sz, i), plane(&xc, sz, i));
            [p, q, r, u, v, t]
        });
        let mut dgamma = Vec::with_capacity(c);
        let mut coefs = Vec::with_capacity(c);
        for (&[p, q, r, g0, g1, g2], &gamma) in sums.iter().zip(&w) {
            let st = self.stats([p, q, r], gamma, n);
            let (s, s2) = (st.s, st.s * st.s);
            let a = gamma * s;
            let c3 = -gamma * s * s2;
            dgamma.push(s * (g1 - st.m_g * g0) - s * s2 * st.m_gx * g2);
            coefs.push(
                [
                    // ∂/∂dy = ḡ·a + xc·k + z
                    a,
                    -a * s2 * g2 / n,
                    -a * g0 / n,
                    // ∂/∂xc = ḡ·p + dy·q + xc·r
                    c3 * st.m_gx,
                    c3 * g2 / n,
                    c3 * ((g1 - st.m_g * g0) / n - 3.0 * s2 * st.m_gx * g2 / n),
                ]
                .map(T::from_f64),
            );
        }
        let mut ddy = Vec::with_capacity(b * c * sz);
        let mut dxc = Vec::with_capacity(b * c * sz);
        for i in 0..b * c {
            let [a, k, z, p, q, r] = coefs[i % c];
            let (g, u, x) = (plane(&gr, sz, i), plane(&dy, sz, i), plane(&xc, sz, i));
            ddy.extend(g.iter().zip(x).map(|(&g, &x)| g * a + x * k + z));
            let terms = g.iter().zip(u).zip(x);
            dxc.extend(terms.map(|((&g, &u), &x)| g * p + u * q + x * r));
        }
        let (shape, cpu) = (&gr_shape, &Device::Cpu);
        Ok((
            Tensor::from_vec(ddy, shape, cpu)?,
            Tensor::from_vec(dxc, shape, cpu)?,
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
        match s1 {
            CpuStorage::F32(_) => self.forward::<f32>((s1, l1), (s2, l2), (s3, l3)),
            CpuStorage::F64(_) => self.forward::<f64>((s1, l1), (s2, l2), (s3, l3)),
            _ => bail!("batch norm input gradient: only f32 and f64 are supported"),
        }
    }

    fn bwd(
        &self,
        dy: &Tensor,
        xc: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (ddy, dxc, dgamma) = match dy.dtype() {
            DType::F32 => self.gradients::<f32>(dy, xc, weight, grad)?,
            _ => self.gradients::<f64>(dy, xc, weight, grad)?,
        };
        Ok((
            dy.track_op().then_some(ddy),
            xc.track_op().then_some(dxc),
            weight.track_op().then_some(dgamma),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::fast_ops::tests::randn;
    use candle_core::Var;

    /// The op's gradients with respect to `dy`, `xc` and `γ` against central differences
    /// of `L = Σ ḡ·dx`, in f64, on data where every term of the closed form counts: `xc`
    /// not centred and of variance near 1 (so that `ε` matters little), `dy` correlated
    /// with `xc` (so that `m_gx` is far from 0), and `ḡ` correlated with both.
    #[test]
    fn input_gradient_op_has_the_gradients_of_central_differences() {
        let op = || BatchNormInputGradient { eps: 0.3 };
        let shape = [3, 2, 5];
        let xc = (randn(&shape, 1) * 1.7).unwrap();
        let dy = ((randn(&shape, 2) + (&xc * 0.8).unwrap()).unwrap() + 0.4).unwrap();
        let gbar =
            ((randn(&shape, 3) + (&dy * 0.5).unwrap()).unwrap() - (&xc * 0.7).unwrap()).unwrap();
        let gamma = Tensor::new(&[1.3f64, -0.6], &Device::Cpu).unwrap();
        let loss = |dy: &Tensor, xc: &Tensor, gamma: &Tensor| -> f64 {
            let dx = dy.apply_op3(xc, gamma, op()).unwrap();
            (dx * &gbar)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let vars = [&dy, &xc, &gamma].map(|t| Var::from_tensor(t).unwrap());
        let dx = vars[0].apply_op3(&vars[1], &vars[2], op()).unwrap();
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
                    let mut args = [dy.clone(), xc.clone(), gamma.clone()];
                    args[which] = t;
                    loss(&args[0], &args[1], &args[2])
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (analytic - numeric).abs() < 1e-7 * (1.0 + numeric.abs()),
                    "argument {which}, element {i}: {analytic} against {numeric}"
                );
            }
        }
        // The op's value is batch norm's input gradient, term by term.
        let n = 15.0;
        let dims: &[usize] = &[0, 2];
        let mean = |t: &Tensor| (t.sum_keepdim(dims).unwrap() / n).unwrap();
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
        let dx = dy.apply_op3(&xc, &gamma, op()).unwrap();
        let diff = (dx - expected).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
    }
}
