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
//! [`first_order_gradients`](super::first_order_gradients); everywhere else the same
//! formula is composed from the differentiable per-channel ops, with `μ` and `σ`
//! recomputed from `x`, so that gradients of gradients stay exact.

use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor, WithDType,
};

use super::{
    bcs, block_sum, centre, channel_affine2, channel_dot, channel_mean, channel_planes,
    channel_sum, contiguous, first_order_only, per_channel, relu_value, through_relu,
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

    /// The closed-form gradients `(dx, dγ, dβ)` in two passes, as plain tensors.
    fn fused_backward<T: WithDType>(
        &self,
        x: &Tensor,
        weight: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, c, sz) = bcs(x.dims())?;
        let n = (b * sz).max(1) as f64;
        let w = weight.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let (x, dy) = (x.contiguous()?, dy.contiguous()?);
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(gs)) = (&*xs, &*gs) else {
            bail!("batch norm: fused backward on the CPU only");
        };
        let (x, g) = (contiguous::<T>(xs, xl)?, contiguous::<T>(gs, gl)?);
        // Σ dy and Σ dy·(x − μ), per channel.
        let sums = per_channel(c, |ci| {
            let m = T::from_f64(self.mean[ci]);
            let sum = channel_planes(&g, (b, c, sz), ci)
                .map(block_sum)
                .sum::<f64>();
            let dot = channel_planes(&g, (b, c, sz), ci)
                .zip(channel_planes(&x, (b, c, sz), ci))
                .map(|(gp, xp)| centred_dot(gp, xp, m))
                .sum::<f64>();
            (sum, dot)
        });
        let (sum, dot): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
        let planes = || {
            x.chunks_exact(sz.max(1))
                .zip(g.chunks_exact(sz.max(1)))
                .take(b * c)
        };
        let dbeta = sum;
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
        for (i, (xp, gp)) in planes().enumerate() {
            let (a, k, m, z) = coefs[i % c];
            dx.extend(
                xp.iter()
                    .zip(gp)
                    .map(|(&xv, &gv)| gv * a + (xv - m) * k + z),
            );
        }
        let cpu = Device::Cpu;
        Ok((
            Tensor::from_vec(dx, xl.shape(), &cpu)?,
            Tensor::from_vec(dgamma, c, &cpu)?.to_dtype(T::DTYPE)?,
            Tensor::from_vec(dbeta, c, &cpu)?.to_dtype(T::DTYPE)?,
        ))
    }

    /// The same gradients composed from differentiable ops, `μ` and `σ` recomputed from `x`.
    fn differentiable_backward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = x.dim(1)?;
        let n = (x.elem_count() / c.max(1)) as f64;
        let centred = centre(x)?;
        let var = (channel_dot(&centred, &centred)? / n)?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let dbeta = channel_sum(dy)?;
        let dgamma = (channel_dot(dy, &centred)? * &inv_std)?;
        // dx = a·dy − (a·dγ·σ⁻¹/N)·(x − μ) − a·dβ/N with a = γσ⁻¹: two full-size nodes
        // (`centred`, `dx`), where a term-by-term composition made five.
        let a = (weight * &inv_std)?;
        let k = ((&a * &dgamma)? * &inv_std)?.affine(-1.0 / n, 0.0)?;
        let z = (&a * &dbeta)?.affine(-1.0 / n, 0.0)?;
        let dx = channel_affine2(dy, &centred, &a, &k, &z)?;
        Ok((dx, dgamma, dbeta))
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
        let dy = &through_relu(self.relu, dy, res)?;
        let (dx, dgamma, dbeta) = if first_order_only() {
            match x.dtype() {
                DType::F32 => self.fused_backward::<f32>(x, weight, dy)?,
                _ => self.fused_backward::<f64>(x, weight, dy)?,
            }
        } else {
            self.differentiable_backward(x, weight, dy)?
        };
        Ok((
            x.track_op().then_some(dx),
            weight.track_op().then_some(dgamma),
            bias.track_op().then_some(dbeta),
        ))
    }
}
