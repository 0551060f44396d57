//! Fast CPU kernels for the hot spots of training, written as Candle custom ops whose
//! backward passes are themselves built from differentiable ops, so that gradients of
//! gradients (the exact Lipschitz penalty) keep working when `CANDLE_GRAD_DO_NOT_DETACH=1`.
//!
//! * **Per-channel ops** over `[B, C, …]`: sums, dots, centring, broadcasts and affine maps.
//! * **ReLU** fused where it follows an op (the residual add, an affine map), with one
//!   masked copy as its backward; **2×2 average pooling**.
//! * **Stride-1 convolution**: three bilinear ops closed under differentiation, run by
//!   direct SIMD kernels, which replaced im2col + GEMM (`bench/RESULTS.md` has both rates).
//! * **Batch norm** in training mode as one op, and its input gradient as another for the
//!   gradients of gradients.
//!
//! Two thread-local scopes ([`grad_mode`]) let a backward pass whose result is never
//! differentiated again take shortcuts.
//!
//! Only the CPU has kernels; callers fall back to Candle's ops on other devices.

mod cpu;
pub mod grad_mode;
#[cfg(test)]
pub(crate) mod test_values;

pub(crate) use cpu::*;
