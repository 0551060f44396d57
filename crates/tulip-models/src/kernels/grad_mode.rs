//! Gradient modes: two thread-local scopes that let a backward pass whose result is never
//! differentiated again take shortcuts ([`first_order_gradients`]) or skip the parameters'
//! gradients ([`input_gradient_only`]). The kernels read them through two crate-internal
//! queries, `first_order_only` and `parameter_gradients_wanted`.

use std::cell::Cell;
use std::thread::LocalKey;

thread_local! {
    static FIRST_ORDER_ONLY: Cell<bool> = const { Cell::new(false) };
    static INPUT_GRADIENT_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with `flag` set on this thread, restoring it afterwards (also on a panic).
fn with_flag<R>(flag: &'static LocalKey<Cell<bool>>, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|c| c.replace(true)));
    f()
}

/// Runs `f` with the gradients of this crate's ops free to be plain tensors that cannot be
/// differentiated again: where it helps (batch norm), their backward passes then use a
/// fused kernel instead of a composition of differentiable ops. For backward passes
/// whose result is only used, never differentiated (a training step's parameter
/// gradients, an attack's input gradient). Applies to this thread only.
pub fn first_order_gradients<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&FIRST_ORDER_ONLY, f)
}

/// Whether this thread is inside [`first_order_gradients`].
pub(crate) fn first_order_only() -> bool {
    FIRST_ORDER_ONLY.with(Cell::get)
}

/// Runs `f` with backward passes that compute no gradient for convolution kernels or
/// batch norms' weights and biases (the [`GradStore`](candle_core::backprop::GradStore)
/// then has none for them): for a pass whose only use is the input's gradient, such as
/// the Lipschitz penalties' inner pass, this skips a third of its convolution work, and,
/// with second-order gradients on, the graph of it. Parameters are assumed not to depend
/// on the input, as in every model here. Applies to this thread only.
pub fn input_gradient_only<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&INPUT_GRADIENT_ONLY, f)
}

/// Whether backward passes on this thread compute parameters' gradients (outside
/// [`input_gradient_only`]).
pub(crate) fn parameter_gradients_wanted() -> bool {
    !INPUT_GRADIENT_ONLY.with(Cell::get)
}
