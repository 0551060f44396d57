//! The CPU kernels: Candle custom ops whose backward passes are themselves built from
//! differentiable ops (these same custom ops), so that gradients of gradients (the exact
//! Lipschitz penalty) keep working when `CANDLE_GRAD_DO_NOT_DETACH=1`.

mod avg_pool;
mod batch_norm_train;
mod channel;
mod conv2d_affine_relu;
mod conv2d_s1;
mod direct_conv;
mod relu;
mod simd;
mod statistics;
mod storage;
mod threads;
mod winograd;

pub(crate) use avg_pool::avg_pool2x2;
pub(crate) use batch_norm_train::batch_norm_train;
pub(crate) use channel::{channel_affine, channel_affine_relu};
#[cfg(test)]
pub(crate) use channel::{channel_dot, channel_sum};
pub(crate) use conv2d_affine_relu::conv2d_affine_relu;
pub(crate) use conv2d_s1::{conv2d_s1, conv2d_s1_statistics};
pub(crate) use relu::{add_relu, relu};
pub(crate) use statistics::{batch_statistics, ChannelStatistics};
