//! Checking that Candle computes second-order gradients (double backpropagation).
//!
//! Candle 0.11 detaches every gradient it computes unless the environment variable
//! `CANDLE_GRAD_DO_NOT_DETACH` is set to a non-empty value other than `0`. It reads the
//! variable into a thread-local the first time a thread runs a backward pass, and never
//! again. Without it the gradient of a gradient penalty is silently wrong (the penalty's
//! value is right, its parameter gradient is not). So:
//!
//! - binaries call [`enable_second_order_gradients`] before any tensor work when a run
//!   needs second order (`tulip train` with the exact penalty), and tests at the
//!   top of every test that needs second order (each test runs on its own thread, and a
//!   thread reads the variable at its first backward pass);
//! - the exact Lipschitz penalty calls [`ensure_second_order_gradients`] when it is built
//!   and on every use, and fails with [`PenaltyError::SecondOrderGradientsNotLive`]
//!   instead of computing a wrong gradient.
//!
//! In that mode every gradient Candle computes keeps its own graph, including those of
//! the last backward pass of a step, which no one differentiates again: the exact
//! penalty's step then held every intermediate of its backward pass until the step ended.
//! [`backward_detached`] runs that last pass on a thread started, by
//! [`enable_second_order_gradients`], before the variable was set, where Candle detaches.

use std::cell::Cell;
use std::sync::mpsc;
use std::sync::OnceLock;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::{PenaltyError, Result};

/// The environment variable Candle reads to keep gradients attached to the graph.
pub const CANDLE_GRAD_DO_NOT_DETACH: &str = "CANDLE_GRAD_DO_NOT_DETACH";

thread_local! {
    // Once a thread has run a backward pass, Candle's own flag is fixed for that thread, and
    // the probe runs one; so its answer can be cached per thread.
    static LIVE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Sets `CANDLE_GRAD_DO_NOT_DETACH=1` for this process, after starting (once) the thread
/// that [`backward_detached`] uses, so that that one stays first order.
///
/// This only takes effect on threads that have not yet run a backward pass: Candle reads the
/// variable once per thread, at that thread's first backward pass (including the probe of
/// [`second_order_gradients_live`]). Call it at the start of `main`, before any thread does
/// tensor work, or at the top of a test. Setting the environment is process-global and
/// should not race with foreign (non-Rust) code reading it; Rust's own accesses are
/// serialised by the standard library.
pub fn enable_second_order_gradients() {
    // The first-order thread must fix its mode before the variable is set.
    FIRST_ORDER.get_or_init(FirstOrderThread::start);
    std::env::set_var(CANDLE_GRAD_DO_NOT_DETACH, "1");
}

/// The gradients of `loss` with respect to every variable it depends on, detached (with
/// no graph of their own) whatever the calling thread's mode: for the last backward pass
/// of a training step, whose gradients only the optimizer reads. It differentiates
/// through second-order terms (an input-gradient penalty) all the same. It runs inside
/// [`tulip_models::first_order_gradients`], so the model's layers may use their fused
/// backward kernels.
///
/// After [`enable_second_order_gradients`] this runs Candle's backward on a thread whose
/// mode is first order, so intermediate gradients are freed as the pass goes; otherwise,
/// on CUDA tensors (whose context is bound to the calling thread), or if that thread is
/// gone, it runs here.
///
/// # Errors
/// Whatever Candle's backward pass reports.
pub fn backward_detached(loss: &Tensor) -> candle_core::Result<GradStore> {
    let inline = || tulip_models::first_order_gradients(|| loss.backward());
    match FIRST_ORDER.get() {
        Some(Some(worker)) if loss.device().is_cpu() => match worker.backward(loss) {
            Some(result) => result,
            None => inline(),
        },
        _ => inline(),
    }
}

type Reply = mpsc::Sender<candle_core::Result<GradStore>>;

/// A thread that runs backward passes in Candle's first-order mode.
struct FirstOrderThread {
    jobs: mpsc::Sender<(Tensor, Reply)>,
}

/// Started by the first [`enable_second_order_gradients`]; `None` inside if the thread
/// could not be made first order (the variable was already set when it started).
static FIRST_ORDER: OnceLock<Option<FirstOrderThread>> = OnceLock::new();

impl FirstOrderThread {
    fn start() -> Option<Self> {
        let (jobs, inbox) = mpsc::channel::<(Tensor, Reply)>();
        let (ready, is_ready) = mpsc::channel::<bool>();
        std::thread::Builder::new()
            .name("tulip-first-order-backward".into())
            .spawn(move || {
                // This backward pass fixes the thread's mode while the variable is unset.
                let _ = ready.send(matches!(probe(), Ok(false)));
                for (loss, reply) in inbox {
                    let _ = reply.send(tulip_models::first_order_gradients(|| loss.backward()));
                }
            })
            .ok()?;
        is_ready.recv().ok()?.then_some(Self { jobs })
    }

    /// `None` if the thread is gone.
    fn backward(&self, loss: &Tensor) -> Option<candle_core::Result<GradStore>> {
        let (reply, answer) = mpsc::channel();
        self.jobs.send((loss.clone(), reply)).ok()?;
        answer.recv().ok()
    }
}

/// Runs a tiny double-backpropagation problem with a known answer on this thread and says
/// whether Candle got it right: for `x` a variable, `g = d(Σ x³)/dx = 3x²` by a first backward
/// pass, then `d(Σ g)/dx` by a second, which is `6x` only if second-order gradients are live.
///
/// This runs a backward pass, which fixes Candle's per-thread flag: call
/// [`enable_second_order_gradients`] *before* it, never after.
///
/// # Errors
/// Only if Candle fails on the CPU (which would be a bug).
pub fn second_order_gradients_live() -> Result<bool> {
    let live = probe()?;
    tracing::debug!(live, "second-order gradient probe");
    LIVE.with(|c| c.set(Some(live)));
    Ok(live)
}

fn probe() -> Result<bool> {
    let xs = [0.5f64, -1.25, 2.0];
    let x = Var::new(&xs[..], &Device::Cpu)?;
    let cube = x.as_tensor().sqr()?.mul(x.as_tensor())?;
    let first = cube.sum_all()?.backward()?;
    let Some(g) = first.get(x.as_tensor()) else {
        return Ok(false);
    };
    let second = g.sum_all()?.backward()?;
    let Some(h) = second.get(x.as_tensor()) else {
        // The first gradient was detached from the graph: second order is not live.
        return Ok(false);
    };
    let h: Vec<f64> = h.to_dtype(DType::F64)?.to_vec1()?;
    Ok(h.len() == xs.len()
        && xs
            .iter()
            .zip(&h)
            .all(|(x, h)| (h - 6.0 * x).abs() <= 1e-12 * (1.0 + (6.0 * x).abs())))
}

/// Fails unless second-order gradients are live on this thread (see
/// [`second_order_gradients_live`]). The answer is cached per thread after the first probe,
/// so this is cheap enough to call on every training step.
///
/// # Errors
/// [`PenaltyError::SecondOrderGradientsNotLive`], whose message says how to fix it.
pub fn ensure_second_order_gradients() -> Result<()> {
    let live = match LIVE.with(Cell::get) {
        Some(live) => live,
        None => second_order_gradients_live()?,
    };
    if live {
        Ok(())
    } else {
        Err(PenaltyError::SecondOrderGradientsNotLive)
    }
}

/// Whether a tensor is usable as the differentiation variable of an input gradient.
pub(crate) fn check_variable(x: &Tensor, penalty: &'static str) -> Result<()> {
    if x.is_variable() {
        Ok(())
    } else {
        Err(PenaltyError::InputNotVariable { penalty })
    }
}
