//! # tulip-models
//!
//! The image classifiers of Tulip-rs (docs/method.md §4): All-CNN-C, ResNet22/34,
//! ResNeXt34 and the Wide ResNets WRN-16-4, 16-8, 22-4, 28-10 and 40-4, with batch norm
//! on or off, dropout, any odd kernel size, and the optional tanh output layer.
//!
//! This is the lowest model-facing crate. Penalties, perturbations and attacks program
//! against Candle's [`candle_nn::ModuleT`], so that they take any Candle model; the
//! [`Classifier`] trait defined here adds what the evaluation summary and the trainer need
//! of this crate's models (a linearised mode, named tensors), never a concrete
//! architecture.
//!
//! ## Design record
//! - Tensor names and layouts are the PyTorch `state_dict` ones of the reference module
//!   tree (a tested public API), so checkpoints convert 1:1. They are kept in
//!   construction order in [`Params`], which separates trainable parameters from
//!   batch-norm running statistics (buffers) — Candle's `VarMap` does neither.
//! - Initialisation is PyTorch's default (uniform `±1/√fan_in`), drawn on the host from
//!   a seeded ChaCha stream: the same seed gives the same model on every device.
//! - Batch norm follows PyTorch exactly (momentum 0.1, ε 1e-5, unbiased running
//!   variance). Its running statistics live in the model's own buffers.
//! - A linearised mode ([`Mode::Linearised`]) turns every ReLU and the output tanh into
//!   the identity with batch norm in evaluation mode, so the model is affine. Unlike the
//!   reference, residual blocks keep their skip connection in that mode.
//! - All-CNN: as in the reference, each convolution carries a bias placed before a batch
//!   norm without affine terms (so in training mode that bias has no effect); the stem
//!   convolution of the ResNets is the same.
//! - Wide ResNets use this crate's residual trunk: a 16-channel stem, stages of width
//!   `16k, 32k, 64k`, downsampling by average pooling, and the softmax-initialised 1×1
//!   convolution where the width changes (also at the start of stage 1).
//! - Layers call the ops of the crate's `kernels` module, and each op chooses its
//!   implementation: a CPU kernel (a Candle custom op, differentiable to any order) for a
//!   CPU tensor, else a portable one written with Candle's own ops, which CUDA and Metal
//!   run. No layer or model looks at the device. The kernels' gradient modes are public as
//!   [`grad_mode`].
//! - Dropout uses Candle's random generator, so runs with dropout > 0 are not bit-for-bit
//!   reproducible; dropout is off by default.
#![warn(missing_docs)]

mod allcnn;
pub mod checkpoint;
mod error;
pub mod failpoint;
mod kernels;
pub mod layers;
pub mod loss;
mod model;
pub mod params;
mod resnet;
#[cfg(feature = "testing")]
pub mod testing;

pub use allcnn::AllCnn;
pub use checkpoint::Checkpoint;
pub use error::{ModelError, Result};
pub use kernels::cpu_isa::{cpu_isa, set_cpu_isa, CpuIsa, CpuIsaUnavailable, UnknownCpuIsa};
pub use kernels::grad_mode;
pub use kernels::grad_mode::{first_order_gradients, input_gradient_only};
pub use kernels::portable_ops;
pub use layers::Mode;
pub use model::{Architecture, Model, ModelConfig};
pub use params::{Param, ParamBuilder, ParamKind, Params};
pub use resnet::{BlockKind, ResNet, ResNetSpec};

use candle_core::Tensor;
use candle_nn::ModuleT;

/// A model whose every nonlinearity can be replaced by the identity: then it is an affine
/// map of its input, `f(x) = M x + b`, whose matrix the weight-product norm measures
/// (`tulip_penalties::weight_product_norm`). Any closure `Fn(&Tensor) -> Result<Tensor>`
/// is one.
pub trait Linearised {
    /// The model with every nonlinearity replaced by the identity (evaluation mode): an
    /// affine map of the input, `[B, C, H, W]` → `[B, classes]`.
    ///
    /// # Errors
    /// Fails on an input of the wrong shape.
    fn forward_linearised(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}

impl<F: Fn(&Tensor) -> candle_core::Result<Tensor>> Linearised for F {
    fn forward_linearised(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self(x)
    }
}

/// The models of this crate: a [`ModuleT`] (logits `[B, classes]` of images `[B, C, H,
/// W]`; `train` selects batch statistics, updates the running ones and enables dropout)
/// with a linearised mode and named tensors. Penalties, perturbations and attacks need
/// only the `ModuleT`; this trait is for what needs more (the evaluation summary, the
/// trainer, checkpoints).
pub trait Classifier: ModuleT + Linearised + Send + Sync {
    /// Number of classes.
    fn classes(&self) -> usize;

    /// Input shape `(C, H, W)`.
    fn input_shape(&self) -> (usize, usize, usize);

    /// The model's named tensors.
    fn params(&self) -> &Params;
}

/// Evaluation-mode logits of `x`, detached, for inference: computed inside
/// [`grad_mode::frozen_parameters`], so a model of this crate records no graph and frees
/// each layer's activations as soon as the next layer has used them (a forward pass
/// recording the graph keeps them all until the logits are dropped).
///
/// # Errors
/// Fails on an input of the wrong shape.
pub fn predict(model: &dyn ModuleT, x: &Tensor) -> candle_core::Result<Tensor> {
    grad_mode::frozen_parameters(|| model.forward_t(&x.detach(), false)).map(|z| z.detach())
}
