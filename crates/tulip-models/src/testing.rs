//! Small test-only classifiers (f64, CPU) with known structure, and data helpers, shared
//! by the test suites of the crates that program against [`Classifier`] (enabled by the
//! `testing` feature, for dev-dependencies only). Test support: it panics rather than
//! returning errors.
#![allow(missing_docs, clippy::unwrap_used)]

use crate::layers::{
    avg_pool2x2, global_avg_pool, relu, BatchNorm, Conv2d, Conv2dConfig, Linear, Mode, TanhOutput,
};
use crate::params::Init;
use crate::{Classifier, ParamBuilder, Params};
use candle_core::{DType, Device, Result as CResult, Tensor};
use candle_nn::ModuleT;

pub const DEV: Device = Device::Cpu;

/// conv(1→3, bias) – BN(affine) – ReLU – 2×2 avg pool – conv(3→4) – BN – ReLU – global avg
/// pool – linear(4→3) – optional tanh output layer, on 1×4×4 images.
pub struct TinyConv {
    conv1: Conv2d,
    bn1: Option<BatchNorm>,
    conv2: Conv2d,
    bn2: Option<BatchNorm>,
    fc: Linear,
    tanh: Option<TanhOutput>,
    params: Params,
}

pub const TINY_SHAPE: (usize, usize, usize) = (1, 4, 4);
pub const TINY_CLASSES: usize = 3;

impl TinyConv {
    pub fn new(seed: u64, batch_norm: bool, tanh: bool) -> Self {
        let pb = ParamBuilder::new(seed, DType::F64, &DEV);
        let conv1 = Conv2d::new(&Conv2dConfig::same(1, 3, 3, true), pb.pp("conv1")).unwrap();
        let bn1 = batch_norm.then(|| BatchNorm::new(3, true, pb.pp("bn1")).unwrap());
        let conv2 = Conv2d::new(&Conv2dConfig::same(3, 4, 3, true), pb.pp("conv2")).unwrap();
        let bn2 = batch_norm.then(|| BatchNorm::new(4, false, pb.pp("bn2")).unwrap());
        let fc = Linear::new(4, TINY_CLASSES, pb.pp("fc")).unwrap();
        let tanh = tanh.then(|| TanhOutput::new(TINY_CLASSES, pb.clone()).unwrap());
        Self {
            conv1,
            bn1,
            conv2,
            bn2,
            fc,
            tanh,
            params: pb.params(),
        }
    }

    fn forward_mode(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        let mut h = self.conv1.forward(x)?;
        if let Some(bn) = &self.bn1 {
            h = bn.forward(&h, mode)?;
        }
        h = avg_pool2x2(&relu(&h, mode)?)?;
        h = self.conv2.forward(&h)?;
        // The second batch norm with its ReLU fused (the first one separate), as the
        // ResNets use them: the penalties' tests then check both paths.
        h = match &self.bn2 {
            Some(bn) => bn.forward_relu(&h, mode)?,
            None => relu(&h, mode)?,
        };
        h = global_avg_pool(&h)?;
        let z = self.fc.forward(&h)?;
        match &self.tanh {
            Some(t) => t.forward(&z, mode),
            None => Ok(z),
        }
    }
}

impl ModuleT for TinyConv {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        self.forward_mode(x, Mode::from_train_flag(train))
    }
}

impl crate::Linearised for TinyConv {
    fn forward_linearised(&self, x: &Tensor) -> CResult<Tensor> {
        self.forward_mode(x, Mode::Linearised)
    }
}

impl Classifier for TinyConv {
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

/// `f(x) = W x + b` on flattened `c×h×w` images: the input gradient of the loss is known in
/// closed form, `∇ℓ_i = Wᵀ (softmax(f(x_i)) − e_{y_i})`.
pub struct Affine {
    pub weight: Tensor,
    pub bias: Tensor,
    shape: (usize, usize, usize),
    classes: usize,
    params: Params,
}

impl Affine {
    pub fn new(seed: u64, shape: (usize, usize, usize), classes: usize) -> Self {
        let pb = ParamBuilder::new(seed, DType::F64, &DEV);
        let n = shape.0 * shape.1 * shape.2;
        let weight = pb
            .param("weight", &[classes, n], Init::Uniform { bound: 1.0 })
            .unwrap();
        let bias = pb
            .param("bias", &[classes], Init::Uniform { bound: 1.0 })
            .unwrap();
        Self {
            weight,
            bias,
            shape,
            classes,
            params: pb.params(),
        }
    }

    /// The affine classifier with rows `w[k]` (each of length `c·h·w`) and biases `b`, in
    /// `dtype`: for tests that need the weights on the host (closed-form answers).
    pub fn from_weights(
        w: &[Vec<f64>],
        b: &[f64],
        shape: (usize, usize, usize),
        dtype: DType,
    ) -> Self {
        let (classes, n) = (w.len(), shape.0 * shape.1 * shape.2);
        assert!(w.iter().all(|row| row.len() == n), "rows of length c·h·w");
        assert_eq!(b.len(), classes, "one bias per class");
        let pb = ParamBuilder::new(0, dtype, &DEV);
        let flat: Vec<f64> = w.iter().flatten().copied().collect();
        let weight = pb
            .param_from(
                "weight",
                &Tensor::from_vec(flat, (classes, n), &DEV).unwrap(),
            )
            .unwrap();
        let bias = pb
            .param_from(
                "bias",
                &Tensor::from_vec(b.to_vec(), classes, &DEV).unwrap(),
            )
            .unwrap();
        Self {
            weight,
            bias,
            shape,
            classes,
            params: pb.params(),
        }
    }
}

impl ModuleT for Affine {
    fn forward_t(&self, x: &Tensor, _train: bool) -> CResult<Tensor> {
        let b = x.dim(0)?;
        x.reshape((b, ()))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)
    }
}

impl crate::Linearised for Affine {
    fn forward_linearised(&self, x: &Tensor) -> CResult<Tensor> {
        self.forward_t(x, false)
    }
}

impl Classifier for Affine {
    fn classes(&self) -> usize {
        self.classes
    }
    fn input_shape(&self) -> (usize, usize, usize) {
        self.shape
    }
    fn params(&self) -> &Params {
        &self.params
    }
}

/// Deterministic pseudo-random images in `[0, 1)`.
pub fn images(batch: usize, shape: (usize, usize, usize), seed: u64) -> Tensor {
    let (c, h, w) = shape;
    let n = batch * c * h * w;
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect();
    Tensor::from_vec(v, (batch, c, h, w), &DEV).unwrap()
}

pub fn labels(batch: usize, classes: usize, seed: u64) -> Tensor {
    let v: Vec<u32> = (0..batch)
        .map(|i| ((i as u64 * 7 + seed) % classes as u64) as u32)
        .collect();
    Tensor::from_vec(v, batch, &DEV).unwrap()
}

pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

pub fn vec1(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}
