//! Gradient modes: thread-local scopes that let a backward pass whose result is never
//! differentiated again take shortcuts ([`first_order_gradients`]), skip the parameters'
//! gradients ([`input_gradient_only`]), or leave the parameters out of the graph
//! altogether ([`frozen_parameters`]). The kernels read the first two through two
//! crate-internal queries, `first_order_only` and `parameter_gradients_wanted`; the
//! models read the third ([`parameters_frozen`]).

use std::cell::Cell;
use std::thread::LocalKey;

thread_local! {
    static FIRST_ORDER_ONLY: Cell<bool> = const { Cell::new(false) };
    static INPUT_GRADIENT_ONLY: Cell<bool> = const { Cell::new(false) };
    static FROZEN_PARAMETERS: Cell<bool> = const { Cell::new(false) };
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

/// Runs `f` with this crate's models cutting their parameters from the autograd graph: a
/// forward pass inside it records no path to any parameter, so the backward pass after it
/// computes the input's gradient only (a third less convolution work, and none of the
/// parameters' gradient memory). Outputs and input gradients are the same as outside.
/// For passes that differentiate with respect to the input alone: attacks, adversarial
/// perturbations, gradient statistics, inference.
///
/// Any other [`ModuleT`](candle_nn::ModuleT) is unaffected (its backward pass computes its
/// parameters' gradients too, which are then dropped): the scope is a speed-up, never a
/// change of result. Applies to this thread only.
pub fn frozen_parameters<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&FROZEN_PARAMETERS, f)
}

/// Whether this thread is inside [`frozen_parameters`].
pub fn parameters_frozen() -> bool {
    FROZEN_PARAMETERS.with(Cell::get)
}
