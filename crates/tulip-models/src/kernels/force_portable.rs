//! A switch that sends this thread's ops to their portable implementations on the CPU
//! too, for the tests that compare the two. They compare them through whole layers,
//! which take no argument that could carry the choice down to the ops; a thread-local
//! reaches the ops without widening any signature. The module exists in test builds
//! only, so nothing else can turn it on.

use std::cell::Cell;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside [`run`].
pub(crate) fn active() -> bool {
    ACTIVE.with(Cell::get)
}

/// Runs `f` with every op on this thread taking its portable implementation, restoring
/// the previous choice afterwards (also on a panic).
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ACTIVE.with(|c| c.replace(true)));
    f()
}
