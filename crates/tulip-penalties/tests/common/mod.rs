//! Test-only classifiers: the shared ones from `tulip_models::testing`, plus this suite's own.
#![allow(dead_code)]

pub use tulip_models::testing::*;

use candle_core::{DType, Result as CResult, Tensor};
use candle_nn::ModuleT;
use tulip_models::params::Init;
use tulip_models::{Classifier, ParamBuilder, Params};
/// Logits that do not depend on the input. With `touch_input` the input is still on the
/// graph (multiplied by a zero tensor), so its gradient exists and is exactly zero;
/// without, the input is not on the graph at all.
pub struct Constant {
    bias: Tensor,
    touch_input: bool,
    params: Params,
}

impl Constant {
    pub fn new(touch_input: bool) -> Self {
        let pb = ParamBuilder::new(3, DType::F64, &DEV);
        let bias = pb
            .param("bias", &[TINY_CLASSES], Init::Uniform { bound: 1.0 })
            .unwrap();
        Self {
            bias,
            touch_input,
            params: pb.params(),
        }
    }
}

impl ModuleT for Constant {
    fn forward_t(&self, x: &Tensor, _train: bool) -> CResult<Tensor> {
        let b = x.dim(0)?;
        let z = self.bias.unsqueeze(0)?.broadcast_as((b, TINY_CLASSES))?;
        if self.touch_input {
            let zero = Tensor::zeros((b, 1), x.dtype(), x.device())?;
            let dead = x.reshape((b, ()))?.sum_keepdim(1)?.mul(&zero)?;
            z.broadcast_add(&dead)
        } else {
            Ok(z.contiguous()?)
        }
    }
}

impl tulip_models::Linearised for Constant {
    fn forward_linearised(&self, x: &Tensor) -> CResult<Tensor> {
        self.forward_t(x, false)
    }
}

impl Classifier for Constant {
    fn classes(&self) -> usize {
        TINY_CLASSES
    }
    fn input_shape(&self) -> (usize, usize, usize) {
        TINY_SHAPE
    }
    fn params(&self) -> &Params {
        &self.params
    }
}
