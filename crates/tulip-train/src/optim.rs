//! SGD with momentum (and optionally Nesterov), PyTorch semantics, trainable tensors only.
//!
//! Candle's `SGD` has no momentum. This one follows `torch.optim.SGD` with dampening 0:
//! `v ← μ v + g`, then `θ ← θ − lr · v`, or with Nesterov `θ ← θ − lr · (g + μ v)`.
//! Weight decay is not an optimizer option here: the reference puts it in the objective
//! (the Tikhonov penalty), so it is a penalty term of the loss.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use tulip_models::checkpoint::EXTRA_PREFIX;
use tulip_models::{Checkpoint, Params};

use crate::{Result, TrainError};

/// Momentum SGD over the trainable parameters of a model, in their construction order.
#[derive(Debug)]
pub struct Sgd {
    params: Vec<(String, Var)>,
    velocity: Vec<Option<Tensor>>,
    momentum: f64,
    nesterov: bool,
}

impl Sgd {
    /// An optimizer for the trainable tensors of `params` (never the batch-norm buffers).
    ///
    /// # Errors
    /// A momentum outside `[0, 1)`, or Nesterov without momentum.
    pub fn new(params: &Params, momentum: f64, nesterov: bool) -> Result<Self> {
        if !(0.0..1.0).contains(&momentum) {
            return Err(TrainError::setting(
                "momentum",
                format!("must be in [0, 1), got {momentum}"),
            ));
        }
        if nesterov && momentum == 0.0 {
            return Err(TrainError::setting("nesterov", "needs a momentum > 0"));
        }
        let params: Vec<_> = params
            .trainable()
            .map(|p| (p.name.clone(), p.var.clone()))
            .collect();
        let velocity = vec![None; params.len()];
        Ok(Self {
            params,
            velocity,
            momentum,
            nesterov,
        })
    }

    /// One step with learning rate `lr` from the gradients in `grads`. A parameter
    /// without a gradient (unused in this step) is left alone, as PyTorch does.
    ///
    /// # Errors
    /// A tensor operation fails.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for ((_, var), velocity) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Second-order graphs may hang off the gradient: cut them before storing state.
            let g = g.detach();
            let direction = if self.momentum > 0.0 {
                let v = match velocity.take() {
                    Some(v) => ((v * self.momentum)? + &g)?,
                    None => g.clone(),
                };
                let d = if self.nesterov {
                    (&g + (&v * self.momentum)?)?
                } else {
                    v.clone()
                };
                *velocity = Some(v);
                d
            } else {
                g
            };
            var.set(&(var.as_tensor().detach() - (direction * lr)?)?)?;
        }
        Ok(())
    }

    fn state_name(param: &str) -> String {
        format!("{EXTRA_PREFIX}momentum.{param}")
    }

    /// Adds the momentum buffers to a checkpoint (under the reserved optimizer prefix).
    pub fn save_into(&self, ck: &mut Checkpoint) {
        for ((name, _), v) in self.params.iter().zip(&self.velocity) {
            if let Some(v) = v {
                ck.tensors.insert(Self::state_name(name), v.clone());
            }
        }
    }

    /// Restores the momentum buffers from a checkpoint written by [`Sgd::save_into`].
    ///
    /// # Errors
    /// A buffer of the wrong shape.
    pub fn load_from(&mut self, ck: &Checkpoint) -> Result<()> {
        for ((name, var), v) in self.params.iter().zip(self.velocity.iter_mut()) {
            *v = match ck.tensors.get(&Self::state_name(name)) {
                Some(t) if t.dims() == var.dims() => {
                    Some(t.to_dtype(var.dtype())?.to_device(var.device())?)
                }
                Some(t) => {
                    return Err(TrainError::InvalidConfig(format!(
                        "checkpoint momentum for {name} has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )))
                }
                None => None,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use tulip_models::params::{Init, ParamBuilder};

    /// Minimises f(θ) = ½ θ² (gradient θ) and compares with the recurrences written out
    /// by hand for PyTorch's SGD.
    fn run(momentum: f64, nesterov: bool) -> Vec<f64> {
        let pb = ParamBuilder::new(0, DType::F64, &Device::Cpu);
        let theta = pb.param("theta", &[1], Init::Const(1.0)).unwrap();
        let _running = pb.buffer("running", &[1], 5.0).unwrap();
        let params = pb.params();
        let mut opt = Sgd::new(&params, momentum, nesterov).unwrap();
        let mut out = Vec::new();
        for _ in 0..3 {
            let loss = (theta.sqr().unwrap() * 0.5).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, 0.1).unwrap();
            out.push(theta.to_vec1::<f64>().unwrap()[0]);
        }
        // The buffer is never stepped.
        assert_eq!(
            params.get("running").unwrap().var.to_vec1::<f64>().unwrap(),
            vec![5.0]
        );
        out
    }

    fn reference(momentum: f64, nesterov: bool) -> Vec<f64> {
        let (mut theta, mut v, lr) = (1.0f64, None::<f64>, 0.1);
        let mut out = Vec::new();
        for _ in 0..3 {
            let g = theta;
            let vn = match v {
                Some(v) => momentum * v + g,
                None => g,
            };
            v = Some(vn);
            let d = if nesterov { g + momentum * vn } else { vn };
            theta -= lr * d;
            out.push(theta);
        }
        out
    }

    #[test]
    fn matches_pytorch_recurrences() {
        for (m, n) in [(0.0, false), (0.9, false), (0.9, true)] {
            let got = run(m, n);
            let want = reference(m, n);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-12,
                    "momentum {m} nesterov {n}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_settings() {
        let pb = ParamBuilder::new(0, DType::F64, &Device::Cpu);
        let params = pb.params();
        assert!(Sgd::new(&params, 1.0, false)
            .unwrap_err()
            .to_string()
            .contains("momentum"));
        assert!(Sgd::new(&params, 0.0, true)
            .unwrap_err()
            .to_string()
            .contains("nesterov"));
    }
}
