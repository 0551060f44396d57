//! Candle's backward pass as this workspace builds it: `vendor/candle-core` stores a
//! gradient's first contribution as it is instead of adding it to a fresh `zeros_like`
//! (see `vendor/README.md`). These check the cases that change touches against closed
//! forms: a tensor used several times (the first contribution stored, the rest added), a
//! tensor used twice by one op, views whose gradients are strided, broadcasts, and second
//! order through all of these.
//!
//! Every test turns second-order gradients on first: Candle fixes a thread's mode at its
//! first backward pass, and with `--test-threads=1` the tests share one thread. First-order
//! values are the same in both modes.

use candle_core::{DType, Device, Tensor, Var};
use tulip_penalties::enable_second_order_gradients;

fn var(values: &[f64], shape: &[usize]) -> Var {
    Var::from_tensor(
        &Tensor::new(values, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap(),
    )
    .unwrap()
}

fn constant(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::new(values, &Device::Cpu)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn assert_close(got: &Tensor, want: &[f64], what: &str) {
    let got = values(got);
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w} (all: {got:?})"
        );
    }
}

const X: [f64; 6] = [0.5, -1.25, 2.0, 0.75, -0.3, 1.1];

#[test]
fn a_tensor_used_several_times_sums_its_contributions() {
    enable_second_order_gradients();
    // f = Σ a·x + Σ x² + Σ eˣ + Σ (x + x) ⇒ ∂f/∂x = a + 2x + eˣ + 2.
    let a = [0.3, -0.7, 1.5, 2.0, -1.0, 0.25];
    let x = var(&X, &[2, 3]);
    let xt = x.as_tensor();
    let f = ((xt * constant(&a, &[2, 3])).unwrap().sum_all().unwrap()
        + xt.sqr().unwrap().sum_all().unwrap()
        + xt.exp().unwrap().sum_all().unwrap()
        + (xt + xt).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = f.backward().unwrap();
    let want: Vec<f64> = X
        .iter()
        .zip(a)
        .map(|(x, a)| a + 2.0 * x + x.exp() + 2.0)
        .collect();
    assert_close(grads.get(xt).unwrap(), &want, "∂f/∂x");

    // One op with the same tensor on both sides: Σ x·x ⇒ 2x.
    let g = (xt * xt).unwrap().sum_all().unwrap().backward().unwrap();
    let want: Vec<f64> = X.iter().map(|x| 2.0 * x).collect();
    assert_close(g.get(xt).unwrap(), &want, "∂Σx·x/∂x");
}

#[test]
fn gradients_through_views_are_contiguous_and_in_the_arguments_layout() {
    enable_second_order_gradients();
    // f = Σ b ⊙ xᵀ with x of shape [2, 3]: ∂f/∂x = bᵀ, reached through a transpose, so the
    // first (and only) contribution is a strided view; the stored gradient is contiguous.
    let b = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [3, 2]
    let x = var(&X, &[2, 3]);
    let f = (x.as_tensor().t().unwrap() * constant(&b, &[3, 2]))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = f.backward().unwrap();
    let gx = grads.get(x.as_tensor()).unwrap();
    assert!(gx.is_contiguous(), "gradient of x is strided");
    assert_eq!(gx.dims(), &[2, 3]);
    assert_close(gx, &[1.0, 3.0, 5.0, 2.0, 4.0, 6.0], "∂f/∂x");

    // A narrow: the gradient is zero outside the window. f = Σ w ⊙ x[:, 1..3].
    let w = [10.0, 20.0, 30.0, 40.0];
    let f = (x.as_tensor().narrow(1, 1, 2).unwrap() * constant(&w, &[2, 2]))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = f.backward().unwrap();
    assert_close(
        grads.get(x.as_tensor()).unwrap(),
        &[0.0, 10.0, 20.0, 0.0, 30.0, 40.0],
        "∂f/∂x through narrow",
    );
}

#[test]
fn broadcast_arguments_get_reduced_gradients() {
    enable_second_order_gradients();
    // f = Σ w ⊙ (x + c) ⊙ s with c of shape [1, 3] and s of shape [2, 1]:
    // ∂f/∂c_j = Σ_i w_ij s_i, ∂f/∂s_i = Σ_j w_ij (x_ij + c_j), ∂f/∂x = w ⊙ s.
    let w = [1.0, -2.0, 0.5, 3.0, 0.25, -1.0];
    let (c, s) = ([0.1, 0.2, 0.3], [2.0, -3.0]);
    let x = var(&X, &[2, 3]);
    let cv = var(&c, &[1, 3]);
    let sv = var(&s, &[2, 1]);
    let f = x
        .as_tensor()
        .broadcast_add(cv.as_tensor())
        .unwrap()
        .broadcast_mul(sv.as_tensor())
        .unwrap()
        .mul(&constant(&w, &[2, 3]))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = f.backward().unwrap();
    let gc: Vec<f64> = (0..3).map(|j| w[j] * s[0] + w[3 + j] * s[1]).collect();
    let gs: Vec<f64> = (0..2)
        .map(|i| (0..3).map(|j| w[3 * i + j] * (X[3 * i + j] + c[j])).sum())
        .collect();
    let gx: Vec<f64> = (0..6).map(|k| w[k] * s[k / 3]).collect();
    assert_close(grads.get(cv.as_tensor()).unwrap(), &gc, "∂f/∂c");
    assert_close(grads.get(sv.as_tensor()).unwrap(), &gs, "∂f/∂s");
    assert_close(grads.get(x.as_tensor()).unwrap(), &gx, "∂f/∂x");
}

#[test]
fn second_order_through_fan_out_and_views() {
    enable_second_order_gradients();
    // f = Σ w ⊙ x³ + Σ (x ⊙ w)ᵀ-viewed, with w of shape [1, 3] broadcast over rows:
    //   g = ∂f/∂x = 3w·x² + w,
    //   P = Σ v ⊙ g ⇒ ∂P/∂x = 6w·x·v, ∂P/∂w_j = Σ_i v_ij (3x_ij² + 1).
    let wv = [0.7, -0.4, 1.3];
    let v = [1.0, 2.0, -1.0, 0.5, -2.0, 3.0];
    let x = var(&X, &[2, 3]);
    let w = var(&wv, &[1, 3]);
    let xw = x.as_tensor().broadcast_mul(w.as_tensor()).unwrap();
    let f = (x
        .as_tensor()
        .powf(3.0)
        .unwrap()
        .broadcast_mul(w.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        + xw.t().unwrap().sum_all().unwrap())
    .unwrap();
    let g = f.backward().unwrap().get(x.as_tensor()).unwrap().clone();
    let want_g: Vec<f64> = (0..6)
        .map(|k| 3.0 * wv[k % 3] * X[k] * X[k] + wv[k % 3])
        .collect();
    assert_close(&g, &want_g, "g");

    let p = (&g * constant(&v, &[2, 3])).unwrap().sum_all().unwrap();
    let grads = p.backward().unwrap();
    let want_x: Vec<f64> = (0..6).map(|k| 6.0 * wv[k % 3] * X[k] * v[k]).collect();
    let want_w: Vec<f64> = (0..3)
        .map(|j| {
            (0..2)
                .map(|i| v[3 * i + j] * (3.0 * X[3 * i + j].powi(2) + 1.0))
                .sum()
        })
        .collect();
    assert_close(grads.get(x.as_tensor()).unwrap(), &want_x, "∂P/∂x");
    assert_close(grads.get(w.as_tensor()).unwrap(), &want_w, "∂P/∂w");
    assert_eq!(grads.get(w.as_tensor()).unwrap().dtype(), DType::F64);
}
