use candle_core::{Result as CResult, Tensor};

use crate::params::{Init, ParamBuilder};
use crate::Result;

/// A fully connected layer, PyTorch layout (`weight` is `out × in`) and initialisation.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// Creates `weight` and `bias` under `pb`.
    ///
    /// # Errors
    /// Fails if the tensors cannot be allocated.
    pub fn new(in_features: usize, out_features: usize, pb: ParamBuilder) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let weight = pb.param(
            "weight",
            &[out_features, in_features],
            Init::Uniform { bound },
        )?;
        let bias = pb.param("bias", &[out_features], Init::Uniform { bound })?;
        Ok(Self { weight, bias })
    }

    /// `x Wᵀ + b` for `x` of shape `[B, in]`.
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}
