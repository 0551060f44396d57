//! `backward_detached`: once second-order gradients are on, the last backward pass of a
//! step still differentiates through an input-gradient penalty exactly, and its gradients
//! carry no graph of their own (the memory the exact penalty's step used to hold).
//!
//! A test binary of its own: `enable_second_order_gradients` must run before any other
//! thread of the process sets the variable.

use candle_core::{Device, Var};
use tulip_penalties::{
    backward_detached, enable_second_order_gradients, CANDLE_GRAD_DO_NOT_DETACH,
};

#[test]
fn detached_backward_differentiates_through_a_gradient_penalty() {
    let preset = std::env::var_os(CANDLE_GRAD_DO_NOT_DETACH).is_some();
    enable_second_order_gradients();
    // y = Σ w·x³, g = ∂y/∂x = 3w·x², P = Σ g² = 9w²·Σx⁴, so dP/dw = 18w·Σx⁴.
    let xs = [0.5f64, -1.25, 2.0];
    let x = Var::new(&xs[..], &Device::Cpu).unwrap();
    let w = Var::new(&[0.7f64][..], &Device::Cpu).unwrap();
    let penalty = || {
        let y = x
            .as_tensor()
            .powf(3.0)
            .unwrap()
            .broadcast_mul(w.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap();
        let g = y.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        g.sqr().unwrap().sum_all().unwrap()
    };
    let want = 18.0 * 0.7 * xs.iter().map(|v| v.powi(4)).sum::<f64>();
    let inline = penalty().backward().unwrap();
    let detached = backward_detached(&penalty()).unwrap();
    for (grads, how) in [(&inline, "inline"), (&detached, "detached")] {
        let got = grads.get(w.as_tensor()).unwrap().to_vec1::<f64>().unwrap()[0];
        assert!((got - want).abs() < 1e-12 * want, "{how}: {got} vs {want}");
    }
    // This thread keeps every gradient's graph; the detached pass keeps none.
    assert!(inline.get(w.as_tensor()).unwrap().track_op());
    if !preset {
        assert!(!detached.get(w.as_tensor()).unwrap().track_op());
    }
}
