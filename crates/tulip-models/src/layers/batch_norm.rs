use candle_core::{Result as CResult, Tensor, Var};

use super::Mode;
use crate::kernels::{self, ChannelStatistics};
use crate::params::{Init, ParamBuilder};
use crate::Result;

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// Batch normalisation over dimension 1 of a `[B, C, …]` tensor, with PyTorch's
/// semantics: biased batch variance to normalise, unbiased variance in the running
/// estimate, momentum 0.1, ε = 1e-5, running statistics as buffers.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    running_mean: Var,
    running_var: Var,
    affine: Option<(Tensor, Tensor)>,
}

impl BatchNorm {
    /// Creates `running_mean`, `running_var` and, if `affine`, `weight` (ones) and `bias`
    /// (zeros) under `pb`.
    ///
    /// # Errors
    /// Fails if the tensors cannot be allocated.
    pub fn new(channels: usize, affine: bool, pb: ParamBuilder) -> Result<Self> {
        let affine = if affine {
            let w = pb.param("weight", &[channels], Init::Const(1.0))?;
            let b = pb.param("bias", &[channels], Init::Const(0.0))?;
            Some((w, b))
        } else {
            None
        };
        let running_mean = pb.buffer("running_mean", &[channels], 0.0)?;
        let running_var = pb.buffer("running_var", &[channels], 1.0)?;
        Ok(Self {
            running_mean,
            running_var,
            affine,
        })
    }

    /// Normalises `x`. In [`Mode::Train`] this also updates the running statistics (with
    /// detached values: they are state, not part of the graph).
    ///
    /// Training mode is `kernels::batch_norm_train`; evaluation mode a per-channel
    /// affine map (`kernels::channel_affine`) rather than broadcasting, whose backward
    /// sums over dimensions 0, 2, 3 with Candle's slow strided reduction on the CPU.
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        self.normalise(x, mode, false, None)
    }

    /// `relu(self.forward(x, mode))` (the identity for the ReLU in linearised mode), in one
    /// pass where the device's kernels allow it.
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward_relu(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        self.normalise(x, mode, mode != Mode::Linearised, None)
    }

    /// [`BatchNorm::forward`] (`relu` false) or [`BatchNorm::forward_relu`] (true); in
    /// training mode with `x`'s per-channel batch mean and variance when the caller has
    /// them (the convolution that made `x` takes them as it writes it).
    pub(super) fn normalise(
        &self,
        x: &Tensor,
        mode: Mode,
        relu: bool,
        statistics: Option<ChannelStatistics>,
    ) -> CResult<Tensor> {
        if mode == Mode::Train {
            let n = (x.elem_count() / x.dim(1)?) as f64;
            let affine = self.affine.as_ref().map(|(w, b)| (w, b));
            let normalised = kernels::batch_norm_train(x, affine, statistics, EPS, relu)?;
            self.update_running(&normalised.mean, &normalised.variance, n)?;
            return Ok(normalised.output);
        }
        let (scale, shift) = self.eval_affine()?;
        if relu {
            kernels::channel_affine_relu(x, &scale, &shift)
        } else {
            kernels::channel_affine(x, &scale, &shift)
        }
    }

    /// Evaluation mode as a per-channel affine map `x·scale + shift`, from the running
    /// statistics (detached) and the affine parameters.
    ///
    /// # Errors
    /// Only if Candle fails on these `[C]` tensors.
    pub fn eval_affine(&self) -> CResult<(Tensor, Tensor)> {
        let mean = self.running_mean.as_detached_tensor();
        let var = self.running_var.as_detached_tensor();
        let inv_std = (var + EPS)?.sqrt()?.recip()?;
        let scale = match &self.affine {
            Some((w, _)) => (w * inv_std)?,
            None => inv_std,
        };
        let shift = match &self.affine {
            Some((_, b)) => (b - (&mean * &scale)?)?,
            None => (&mean * &scale)?.neg()?,
        };
        Ok((scale, shift))
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, n: f64) -> CResult<()> {
        let mean = mean.detach().flatten_all()?;
        let unbiased = (var.detach().flatten_all()? * (n / (n - 1.0).max(1.0)))?;
        let rm =
            ((self.running_mean.as_detached_tensor() * (1.0 - MOMENTUM))? + (mean * MOMENTUM)?)?;
        let rv =
            ((self.running_var.as_detached_tensor() * (1.0 - MOMENTUM))? + (unbiased * MOMENTUM)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn seq(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    use crate::layers::{max_abs_diff as max_diff, second_order_on};

    /// The straightforward broadcasting formula, against which the layer is tested.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor) -> CResult<Tensor> {
        let c = x.dim(1)?;
        let r = [0usize, 2, 3];
        let mean = x.mean_keepdim(r.as_slice())?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(r.as_slice())?;
        centred
            .broadcast_div(&(var + EPS)?.sqrt()?)?
            .broadcast_mul(&w.reshape((1, c, 1, 1))?)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)
    }

    #[test]
    fn train_mode_matches_the_reference_formula_to_second_order() {
        second_order_on();
        let pb = ParamBuilder::new(3, DType::F64, &Device::Cpu);
        let bn = BatchNorm::new(3, true, pb.clone()).unwrap();
        let (w, b) = bn.affine.clone().unwrap();
        let x = Var::from_tensor(&seq(&[4, 3, 5, 6], 1).affine(3.0, 2.0).unwrap()).unwrap();
        let r = seq(&[4, 3, 5, 6], 2);
        let q = seq(&[4, 3, 5, 6], 3);
        // L = Σ r·y + ‖∂(Σ q·y)/∂x‖²: first and second derivatives of the layer.
        let run_with = |f: &dyn Fn(&Tensor) -> CResult<Tensor>, input_only: bool| -> Vec<Tensor> {
            let y = f(x.as_tensor()).unwrap();
            let inner_loss = (&y * &q).unwrap().sum_all().unwrap();
            let inner = if input_only {
                crate::input_gradient_only(|| inner_loss.backward()).unwrap()
            } else {
                inner_loss.backward().unwrap()
            };
            let gx = inner.get(x.as_tensor()).unwrap().clone();
            let l = ((&y * &r).unwrap().sum_all().unwrap() + gx.sqr().unwrap().sum_all().unwrap())
                .unwrap();
            let g = l.backward().unwrap();
            vec![
                y,
                gx,
                g.get(x.as_tensor()).unwrap().clone(),
                g.get(&w).unwrap().clone(),
                g.get(&b).unwrap().clone(),
            ]
        };
        let run = |f: &dyn Fn(&Tensor) -> CResult<Tensor>| run_with(f, false);
        let ours = run(&|x| bn.forward(x, Mode::Train));
        let theirs = run(&|x| reference(x, &w, &b));
        for (i, (a, t)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.dims(), t.dims());
            assert!(max_diff(a, t) < 1e-9, "output {i}: {}", max_diff(a, t));
        }
        // The Lipschitz penalties' way: the inner pass for the input's gradient only.
        let ours = run_with(&|x| bn.forward_relu(x, Mode::Train), true);
        let theirs = run_with(&|x| reference(x, &w, &b)?.relu(), true);
        for (i, (a, t)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                max_diff(a, t) < 1e-9,
                "input gradient only, output {i}: {}",
                max_diff(a, t)
            );
        }
        // The same with the ReLU fused in, and in evaluation mode (affine + ReLU).
        let ours = run(&|x| bn.forward_relu(x, Mode::Train));
        let theirs = run(&|x| reference(x, &w, &b)?.relu());
        for (i, (a, t)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                max_diff(a, t) < 1e-9,
                "with ReLU, output {i}: {}",
                max_diff(a, t)
            );
        }
        let ours = run(&|x| bn.forward_relu(x, Mode::Eval));
        let theirs = run(&|x| bn.forward(x, Mode::Eval)?.relu());
        for (i, (a, t)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                max_diff(a, t) < 1e-12,
                "eval with ReLU, output {i}: {}",
                max_diff(a, t)
            );
        }
    }

    /// The fused first-order backward pass (f64 and f32, with and without the affine
    /// parameters, on data whose mean is far from zero) against the reference's gradients.
    #[test]
    fn train_mode_first_order_gradients_match_the_reference() {
        let cases = [
            (true, 2.0, false),
            (true, 100.0, false),
            (false, -30.0, false),
        ];
        for (affine, offset, relu) in cases.into_iter().chain([(true, 2.0, true)]) {
            let pb = ParamBuilder::new(3, DType::F64, &Device::Cpu);
            let bn = BatchNorm::new(3, affine, pb).unwrap();
            let (w, b) = bn.affine.clone().unwrap_or_else(|| {
                let ones = Tensor::ones(3, DType::F64, &Device::Cpu).unwrap();
                (ones.clone(), ones.zeros_like().unwrap())
            });
            // Non-trivial γ, β, so that a slip in either shows.
            let (w, b) = (w.affine(1.5, -0.25).unwrap(), b.affine(1.0, 0.5).unwrap());
            let x64 = seq(&[4, 3, 5, 6], 1).affine(3.0, offset).unwrap();
            let r64 = seq(&[4, 3, 5, 6], 2);
            let reference_grads = {
                let x = Var::from_tensor(&x64).unwrap();
                let (wv, bv) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
                let y = reference(x.as_tensor(), wv.as_tensor(), bv.as_tensor()).unwrap();
                let y = if relu { y.relu().unwrap() } else { y };
                let g = (&y * &r64).unwrap().sum_all().unwrap().backward().unwrap();
                let get = |v: &Var| g.get(v.as_tensor()).unwrap().clone();
                [y, get(&x), get(&wv), get(&bv)]
            };
            for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 2e-4)] {
                let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
                let x = Var::from_tensor(&cast(&x64)).unwrap();
                let (wv, bv) = (
                    Var::from_tensor(&cast(&w)).unwrap(),
                    Var::from_tensor(&cast(&b)).unwrap(),
                );
                let parameters = Some((wv.as_tensor(), bv.as_tensor()));
                let y = kernels::batch_norm_train(x.as_tensor(), parameters, None, EPS, relu)
                    .unwrap()
                    .output;
                let g = crate::first_order_gradients(|| {
                    (&y * cast(&r64))
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap()
                });
                let get = |v: &Var| g.get(v.as_tensor()).unwrap().clone();
                let ours = [y.clone(), get(&x), get(&wv), get(&bv)];
                for (i, (a, t)) in ours.iter().zip(&reference_grads).enumerate() {
                    let a = a.to_dtype(DType::F64).unwrap();
                    let scale = t
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap();
                    let err = max_diff(&a, t) / (1.0 + scale);
                    assert!(
                        err < tol,
                        "{dtype:?} affine={affine} offset={offset} output {i}: {err:e}"
                    );
                }
            }
        }
        assert!(
            !crate::kernels::grad_mode::first_order_only(),
            "the scope is restored"
        );
    }

    #[test]
    fn running_statistics_and_eval_mode_follow_pytorch() {
        let pb = ParamBuilder::new(3, DType::F64, &Device::Cpu);
        let bn = BatchNorm::new(2, false, pb).unwrap();
        let x = seq(&[3, 2, 2, 2], 4);
        let _ = bn.forward(&x, Mode::Train).unwrap();
        let n = 12.0;
        let mean = x.mean((0, 2, 3)).unwrap();
        let var = x
            .broadcast_sub(&mean.reshape((1, 2, 1, 1)).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .sum((0, 2, 3))
            .unwrap()
            / (n - 1.0);
        let want_rm = (&mean * MOMENTUM).unwrap();
        let want_rv = ((var.unwrap() * MOMENTUM).unwrap() + (1.0 - MOMENTUM)).unwrap();
        assert!(max_diff(bn.running_mean.as_tensor(), &want_rm) < 1e-14);
        assert!(max_diff(bn.running_var.as_tensor(), &want_rv) < 1e-14);
        let y = bn.forward(&x, Mode::Eval).unwrap();
        let want = x
            .broadcast_sub(&want_rm.reshape((1, 2, 1, 1)).unwrap())
            .unwrap()
            .broadcast_div(
                &(want_rv + EPS)
                    .unwrap()
                    .sqrt()
                    .unwrap()
                    .reshape((1, 2, 1, 1))
                    .unwrap(),
            )
            .unwrap();
        assert!(max_diff(&y, &want) < 1e-12);
    }
}
