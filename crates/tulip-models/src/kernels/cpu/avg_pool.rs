//! 2×2 average pooling ([`avg_pool2x2`]) and its adjoint, each the other's derivative.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};

use super::storage::{contiguous, float_dispatch};

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
/// element with index arithmetic, far slower.
///
/// # Errors
/// Fails on a tensor that is not 4-D.
pub(crate) fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(AvgPool2)
}

#[cfg(test)]
mod tests {
    use super::super::channel::channel_affine;
    use super::*;
    use candle_core::Var;

    use crate::kernels::test_values::seeded_uniform;
    use crate::layers::{max_abs_diff as max_diff, second_order_on};

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
            let x0 = seeded_uniform(&[2, 3, h, w], 41);
            let a0 = seeded_uniform(&[3], 42);
            let q = seeded_uniform(&[2, 3, h / 2, w / 2], 43);
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
}
