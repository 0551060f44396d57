//! The building blocks of every architecture, each aware of the [`Mode`] it runs in.
//!
//! These are written for this crate rather than taken from candle-nn because the models
//! need three things candle-nn's layers do not give together: parameters recorded with
//! their kind (trainable or buffer) in a stable order, batch-norm running statistics that
//! live in the model's own tensors, and a linearised mode.

mod batch_norm;
mod conv;
mod linear;
mod tanh_output;

pub use batch_norm::BatchNorm;
pub use conv::{Conv2d, Conv2dConfig};
pub use linear::Linear;
pub use tanh_output::TanhOutput;

use candle_core::{Result, Tensor};

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training: batch norm normalises by batch statistics and updates its running ones;
    /// dropout is active.
    Train,
    /// Evaluation: batch norm uses running statistics; dropout is off.
    Eval,
    /// Evaluation with every nonlinearity replaced by the identity (ReLU, the output
    /// tanh), so that the whole network is an affine map (SPEC §2, weight-product norm).
    Linearised,
}

impl Mode {
    /// `Train` for `true`, `Eval` for `false` (the candle-nn `ModuleT` convention).
    pub fn from_train_flag(train: bool) -> Self {
        if train {
            Mode::Train
        } else {
            Mode::Eval
        }
    }
}

/// ReLU, or the identity in linearised mode.
pub fn relu(x: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Linearised => Ok(x.clone()),
        Mode::Train | Mode::Eval => x.relu(),
    }
}

/// Dropout with probability `p` in training mode; the identity otherwise.
pub fn dropout(x: &Tensor, p: f64, mode: Mode) -> Result<Tensor> {
    if mode == Mode::Train && p > 0.0 {
        candle_nn::ops::dropout(x, p as f32)
    } else {
        Ok(x.clone())
    }
}

/// Mean over the spatial dimensions: `[B, C, H, W] → [B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

/// 2×2 average pooling with stride 2 (floor on odd sizes, like PyTorch's `AvgPool2d(2)`).
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    x.avg_pool2d(2)
}
