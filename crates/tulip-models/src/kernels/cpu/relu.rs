//! ReLU ([`relu`]), the residual block's `relu(x + y)` ([`add_relu`]), and the masked copy
//! both differentiate to ([`relu_mask`]).

use candle_core::cpu_backend::unary_map_vec_par;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

use super::storage::float_dispatch;
use super::threads::zip_map;

/// `max(v, 0)` with PyTorch's conventions: 0 at 0, and 0 for NaN.
#[inline(always)]
pub(super) fn relu_value<T: PartialOrd + Copy>(v: T, zero: T) -> T {
    if v > zero {
        v
    } else {
        zero
    }
}
/// The gradient reaching the input of an op whose output `out` went through a ReLU (if
/// `relu`): positive exactly where the ReLU's input was.
pub(super) fn through_relu(relu: bool, grad: &Tensor, out: &Tensor) -> Result<Tensor> {
    if relu {
        relu_mask(grad, out)
    } else {
        Ok(grad.clone())
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
/// to any order.
///
/// # Errors
/// Only for dtypes other than f32 and f64.
pub(crate) fn relu(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(Relu)
}

pub(super) fn relu_mask(g: &Tensor, x: &Tensor) -> Result<Tensor> {
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
/// differentiable to any order.
///
/// # Errors
/// Fails if the shapes differ.
pub(crate) fn add_relu(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    x.apply_op2(y, AddRelu)
}

#[cfg(test)]
mod tests {
    use super::super::channel::channel_affine;
    use super::*;
    use candle_core::Var;

    use crate::kernels::test_values::seeded_uniform;
    use crate::layers::{max_abs_diff as max_diff, second_order_on};

    /// The element-wise ops on inputs large enough for Candle's parallel maps (from 64Ki
    /// elements), one of them a strided view, against Candle's compositions.
    #[test]
    fn elementwise_ops_match_candle_on_large_and_strided_inputs() {
        let x = seeded_uniform(&[2, 4, 100, 100], 61);
        let y = seeded_uniform(&[2, 4, 100, 100], 62)
            .transpose(2, 3)
            .unwrap();
        let z = seeded_uniform(&[2, 4, 100, 100], 63);
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
        let x0 = seeded_uniform(&[3, 4, 2, 5], 31);
        let a0 = seeded_uniform(&[4], 32);
        let s0 = seeded_uniform(&[4], 33);
        let q = seeded_uniform(&[3, 4, 2, 5], 34);
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
        let d = seeded_uniform(&[4], 35);
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
}
