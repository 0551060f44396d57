//! The second-order probe: live when enabled, and — in a fresh process without
//! `CANDLE_GRAD_DO_NOT_DETACH` — detects the broken case, so that the exact penalty refuses
//! to run instead of training on a silently wrong gradient.

mod common;

use std::process::Command;

use candle_core::Var;
use candle_nn::ModuleT;
use common::{images, labels, TinyConv, TINY_CLASSES, TINY_SHAPE};
use tulip_models::loss::cross_entropy;
use tulip_models::Classifier;
use tulip_penalties::{
    enable_second_order_gradients, ensure_second_order_gradients, row_norms,
    second_order_gradients_live, LipschitzPenalty, Norm, PenaltyError, PenaltyMethod, Summary,
    CANDLE_GRAD_DO_NOT_DETACH,
};

/// Set in the child process to make [`without_flag_helper`] do its work.
const MARKER: &str = "TULIP_PENALTIES_SECOND_ORDER_CHILD";
const HELPER: &str = "without_flag_helper";
const DONE: &str = "second-order child: checks passed";

#[test]
fn probe_is_live_once_enabled() {
    enable_second_order_gradients();
    assert!(second_order_gradients_live().unwrap());
    ensure_second_order_gradients().unwrap();
    LipschitzPenalty::new(Norm::L2, Summary::Max).unwrap();
}

#[test]
fn probe_detects_missing_flag_in_a_fresh_process() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", HELPER, "--nocapture", "--test-threads=1"])
        .env_remove(CANDLE_GRAD_DO_NOT_DETACH)
        .env(MARKER, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Runs its checks only in the child process started by
/// [`probe_detects_missing_flag_in_a_fresh_process`]; a no-op otherwise.
#[test]
fn without_flag_helper() {
    if std::env::var_os(MARKER).is_none() {
        return;
    }
    assert!(std::env::var_os(CANDLE_GRAD_DO_NOT_DETACH).is_none());

    // What the check guards against: double backpropagation by hand gives no parameter
    // gradient at all (the input gradient was detached), with no error.
    let model = TinyConv::new(5, true, true);
    let (x, y) = (images(3, TINY_SHAPE, 1), labels(3, TINY_CLASSES, 0));
    let xv = Var::from_tensor(&x).unwrap();
    let logits = model.forward_t(xv.as_tensor(), true).unwrap();
    let loss = cross_entropy(&logits, &y).unwrap();
    let g = loss.backward().unwrap();
    let g = g.get(xv.as_tensor()).unwrap();
    let p = row_norms(g, Norm::L2).unwrap().max(0).unwrap();
    let grads = p.backward().unwrap();
    let w = model.params().get("fc.weight").unwrap();
    assert!(
        grads.get(w.var.as_tensor()).is_none(),
        "second order unexpectedly live"
    );

    // The probe sees it, and the exact penalty refuses to be built.
    assert!(!second_order_gradients_live().unwrap());
    assert!(matches!(
        ensure_second_order_gradients(),
        Err(PenaltyError::SecondOrderGradientsNotLive)
    ));
    assert!(matches!(
        LipschitzPenalty::new(Norm::L2, Summary::Max),
        Err(PenaltyError::SecondOrderGradientsNotLive)
    ));
    assert!(matches!(
        PenaltyMethod::Exact.build(Norm::L1, Summary::Mean, 0.01),
        Err(PenaltyError::SecondOrderGradientsNotLive)
    ));
    // The message says what to do.
    let msg = PenaltyError::SecondOrderGradientsNotLive.to_string();
    assert!(msg.contains("CANDLE_GRAD_DO_NOT_DETACH=1"), "{msg}");
    // The finite-difference method is first-order and still builds.
    PenaltyMethod::FiniteDifference
        .build(Norm::L2, Summary::Mean, 0.01)
        .unwrap();
    // Setting the variable now is too late for this thread: Candle has read it already.
    enable_second_order_gradients();
    assert!(!second_order_gradients_live().unwrap());
    // A new thread reads it afresh.
    std::thread::spawn(|| assert!(second_order_gradients_live().unwrap()))
        .join()
        .unwrap();
    println!("{DONE}");
}
