use candle_core::{Result as CResult, Tensor};

use super::{BatchNorm, Mode};
use crate::params::{Init, ParamBuilder};
use crate::Result;

/// The optional tanh output layer (docs/method.md §4): batch norm on the logits without
/// affine terms, then `|t| · tanh(z / |t|)` with a learnable scalar `t` initialised to 1.
///
/// It bounds every logit by `|t|`, which bounds the loss's sensitivity; in linearised
/// mode it reduces to the (affine) batch norm.
#[derive(Debug, Clone)]
pub struct TanhOutput {
    bn: BatchNorm,
    t: Tensor,
}

impl TanhOutput {
    /// Creates `bn.running_mean`, `bn.running_var` and `t` under `pb`.
    ///
    /// # Errors
    /// Fails if the tensors cannot be allocated.
    pub fn new(classes: usize, pb: ParamBuilder) -> Result<Self> {
        let bn = BatchNorm::new(classes, false, pb.pp("bn"))?;
        let t = pb.param("t", &[], Init::Const(1.0))?;
        Ok(Self { bn, t })
    }

    /// The tanh scale `t` (a scalar tensor).
    pub fn scale(&self) -> &Tensor {
        &self.t
    }

    /// Applies the layer to logits `[B, classes]`.
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward(&self, z: &Tensor, mode: Mode) -> CResult<Tensor> {
        let z = self.bn.forward(z, mode)?;
        if mode == Mode::Linearised {
            return Ok(z);
        }
        let t = self.t.abs()?;
        z.broadcast_div(&t)?.tanh()?.broadcast_mul(&t)
    }
}
