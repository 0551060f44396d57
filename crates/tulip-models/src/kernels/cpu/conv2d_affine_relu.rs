//! The evaluation-mode convolution + batch norm (+ residual) + ReLU as one op, for
//! constant kernels and coefficients.

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};

use super::conv2d_s1::conv2d_grad_input;
use super::direct_conv::{self, ConvGeometry};
use super::relu::relu_mask;
use super::simd::{Isa, Lane};
use super::storage::{contiguous, float_dispatch};

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
    fn cpu<T: WithDType + Lane>(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        skip: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) =
            ConvGeometry::of_forward(xl.dims(), wl.dims(), self.padding, "conv_affine_relu")?;
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
        let (y, _) = direct_conv::conv_then(Isa::Chosen, &x, &g, &w, o, Some(epilogue), false);
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
/// For a kernel and coefficients that are constants (a frozen view, or inference): only
/// `x` and `skip` get gradients.
///
/// # Errors
/// Fails on a shape mismatch.
pub(crate) fn conv2d_affine_relu(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    skip: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
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
    use candle_core::Var;

    use super::super::channel::channel_affine;
    use super::super::conv2d_s1::conv2d_s1;
    use crate::kernels::test_values::seeded_uniform;
    use crate::layers::{max_abs_diff as max_diff, second_order_on};

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
            let x0 = seeded_uniform(&[2, c, h, width], 71);
            let w = seeded_uniform(&[o, c, k, k], 72);
            let (scale, shift) = (seeded_uniform(&[o], 73), seeded_uniform(&[o], 74));
            let dims = conv2d_s1(&x0, &w, p).unwrap().dims().to_vec();
            let (q, r, skip0) = (
                seeded_uniform(&dims, 75),
                seeded_uniform(&dims, 76),
                seeded_uniform(&dims, 77),
            );
            // z, then the gradients of ⟨z, q⟩ and of ⟨z, r⟩ + ‖∂⟨z, q⟩/∂x‖² +
            // ‖∂⟨z, q⟩/∂skip‖² for x, the residual and the kernel (those that have one).
            let run = |fused: bool, w: &Tensor, with_skip: bool| -> Vec<Tensor> {
                let x = Var::from_tensor(&x0).unwrap();
                let x = x.as_tensor();
                let skip = Var::from_tensor(&skip0).unwrap();
                let skip = with_skip.then_some(skip.as_tensor());
                let z = if fused {
                    crate::kernels::conv2d_affine_relu(x, w, &scale, &shift, skip, p).unwrap()
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
}
