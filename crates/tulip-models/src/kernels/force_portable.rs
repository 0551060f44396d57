//! A switch that sends this thread's ops to their portable implementations on the CPU
//! too: the code path of a GPU, run where there is none. The tests compare the two
//! paths through whole layers, and `cargo xtask gpu-check --device cpu` trains through
//! it; layers take no argument that could carry the choice down to the ops, and a
//! thread-local reaches them without widening any signature.

use std::cell::Cell;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside [`portable_ops`].
pub(crate) fn active() -> bool {
    ACTIVE.with(Cell::get)
}

/// Runs `f` with every op of this thread taking its portable implementation (Candle's
/// own ops, as on a GPU) also for CPU tensors, restoring the previous choice afterwards
/// (also on a panic). Slower than the CPU kernels; for checks of the GPU's code path on
/// a machine without one. Only this thread's forward passes are affected, which is
/// enough: a portable forward pass records only Candle's own ops, so its backward pass
/// is portable wherever it runs.
pub fn portable_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ACTIVE.with(|c| c.replace(true)));
    f()
}
