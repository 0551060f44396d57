use candle_core::{Result as CResult, Tensor, Var};

use super::Mode;
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
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        let channels = x.dim(1)?;
        let mut stat_shape = vec![1; x.rank()];
        stat_shape[1] = channels;
        let reduce: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();

        let normalised = match mode {
            Mode::Train => {
                let mean = x.mean_keepdim(reduce.as_slice())?;
                let centred = x.broadcast_sub(&mean)?;
                let var = centred.sqr()?.mean_keepdim(reduce.as_slice())?;
                let n = (x.elem_count() / channels) as f64;
                self.update_running(&mean, &var, n)?;
                centred.broadcast_div(&(var + EPS)?.sqrt()?)?
            }
            Mode::Eval | Mode::Linearised => {
                let mean = self
                    .running_mean
                    .as_detached_tensor()
                    .reshape(stat_shape.as_slice())?;
                let var = self
                    .running_var
                    .as_detached_tensor()
                    .reshape(stat_shape.as_slice())?;
                x.broadcast_sub(&mean)?
                    .broadcast_div(&(var + EPS)?.sqrt()?)?
            }
        };
        match &self.affine {
            Some((w, b)) => normalised
                .broadcast_mul(&w.reshape(stat_shape.as_slice())?)?
                .broadcast_add(&b.reshape(stat_shape.as_slice())?),
            None => Ok(normalised),
        }
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
