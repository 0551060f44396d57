//! Test-only classifiers: the shared ones from `tulip_models::testing`, plus this suite's own.
#![allow(dead_code)]

pub use tulip_models::testing::*;

use candle_core::{Result as CResult, Tensor};
use candle_nn::ModuleT;
use tulip_models::{Classifier, Params};
/// An affine model whose logits for image `i` are `gate_i · W x_i + b` (gates fixed, cycled
/// over the batch): images with gate 0 have an exactly zero input gradient.
pub struct Gated {
    pub inner: Affine,
    pub gates: Vec<f64>,
}

impl ModuleT for Gated {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        let b = x.dim(0)?;
        let gates: Vec<f64> = (0..b).map(|i| self.gates[i % self.gates.len()]).collect();
        let gates = Tensor::from_vec(gates, (b, 1), x.device())?;
        let wx = self
            .inner
            .forward_t(x, train)?
            .broadcast_sub(&self.inner.bias)?;
        wx.broadcast_mul(&gates)?.broadcast_add(&self.inner.bias)
    }
}

impl tulip_models::Linearised for Gated {
    fn forward_linearised(&self, x: &Tensor) -> CResult<Tensor> {
        self.forward_t(x, false)
    }
}

impl Classifier for Gated {
    fn classes(&self) -> usize {
        self.inner.classes()
    }
    fn input_shape(&self) -> (usize, usize, usize) {
        self.inner.input_shape()
    }
    fn params(&self) -> &Params {
        self.inner.params()
    }
}
