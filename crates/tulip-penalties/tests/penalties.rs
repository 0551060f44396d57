//! Integration tests of the penalties: exact gradients against finite differences, the
//! finite-difference penalty's limit, zero penalties, Tikhonov scopes, norms, and the
//! evaluation-only norms.

mod common;

use candle_core::{DType, Tensor, Var};
use candle_nn::ModuleT;
use common::{images, labels, scalar, vec1, Affine, Constant, TinyConv, TINY_CLASSES, TINY_SHAPE};
use proptest::prelude::*;
use tulip_models::loss::cross_entropy;
use tulip_models::{Classifier, Linearised, ParamKind};
use tulip_penalties::{
    enable_second_order_gradients, input_gradient, jacobian_norm, row_norms,
    steepest_ascent_direction, weight_product_norm, FiniteDifferencePenalty, InputGradient,
    LipschitzPenalty, Norm, Penalty, PenaltyError, PenaltyInputs, PenaltyMethod, Summary,
    TikhonovPenalty, TikhonovScope,
};

/// The penalty at `(x, y)` with the model in training mode, as the trainer computes it: `x`
/// made a variable, forward, batch-mean loss, `value`.
fn penalty_at(model: &dyn Classifier, penalty: &dyn Penalty, x: &Tensor, y: &Tensor) -> Tensor {
    let xv = Var::from_tensor(&x.detach()).unwrap();
    let logits = model.forward_t(xv.as_tensor(), true).unwrap();
    let loss = cross_entropy(&logits, y).unwrap();
    penalty
        .value(&PenaltyInputs {
            model,
            x: xv.as_tensor(),
            labels: y,
            logits: &logits,
            loss: &loss,
        })
        .unwrap()
}

/// Compares the autodiff gradient of the penalty with respect to individual parameter
/// entries with a central finite difference of its value.
fn check_parameter_gradient(
    label: &str,
    model: &TinyConv,
    penalty: &dyn Penalty,
    probes: &[(&str, usize)],
) {
    let x = images(4, TINY_SHAPE, 11);
    let y = labels(4, TINY_CLASSES, 1);
    let p = penalty_at(model, penalty, &x, &y);
    assert!(scalar(&p) > 0.0, "degenerate test: zero penalty");
    let grads = p.backward().unwrap();
    let h = 1e-5;
    for &(name, idx) in probes {
        let param = model
            .params()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(param.kind, ParamKind::Trainable);
        let auto = grads
            .get(param.var.as_tensor())
            .map(|g| vec1(g)[idx])
            .unwrap_or(0.0);
        let original = vec1(param.var.as_tensor());
        let shape = param.var.shape().clone();
        let at = |delta: f64| {
            let mut v = original.clone();
            v[idx] += delta;
            param
                .var
                .set(&Tensor::from_vec(v, shape.clone(), &common::DEV).unwrap())
                .unwrap();
            scalar(&penalty_at(model, penalty, &x, &y))
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        at(0.0);
        // The difference quotient cannot resolve a derivative below its rounding noise,
        // a few ulps of P over h (derivatives that are zero in exact arithmetic, such as a
        // bias followed by batch norm, come out as ±2e-10 from 16 ulps at P ≈ 1).
        let noise = 64.0 * f64::EPSILON * scalar(&p).abs().max(1.0) / h;
        let tol = 1e-6 * auto.abs().max(fd.abs()) + noise;
        assert!(
            (auto - fd).abs() <= tol,
            "{label}: ∂P/∂{name}[{idx}] autodiff {auto:e} vs central difference {fd:e}",
        );
    }
}

const PROBES: &[(&str, usize)] = &[
    ("conv1.weight", 0),
    ("conv1.weight", 5),
    ("conv1.bias", 1),
    ("bn1.weight", 2),
    ("bn1.bias", 0),
    ("conv2.weight", 7),
    ("conv2.weight", 30),
    ("fc.weight", 3),
    ("fc.bias", 1),
    ("t", 0),
];

#[test]
fn exact_penalty_gradient_matches_central_difference() {
    enable_second_order_gradients();
    let model = TinyConv::new(5, true, true);
    for norm in [Norm::L2, Norm::L1, Norm::Linf] {
        for summary in [Summary::Max, Summary::Mean] {
            let penalty = LipschitzPenalty::new(norm, summary).unwrap();
            check_parameter_gradient(&format!("{norm} {summary:?}"), &model, &penalty, PROBES);
        }
    }
}

/// The finite-difference penalty holds its direction `d` fixed (detached), so its gradient
/// is not that of its value; but as `h → 0` it tends to the gradient of
/// `½ · mean_i ‖∇ℓ_i‖²` (the direction's own variation drops out at the optimum direction),
/// which double backpropagation gives exactly.
#[test]
fn finite_difference_penalty_gradient_approaches_the_exact_squared_norm_gradient() {
    enable_second_order_gradients();
    let model = TinyConv::new(6, false, false);
    let (x, y) = (images(4, TINY_SHAPE, 2), labels(4, TINY_CLASSES, 1));
    let exact = {
        let xv = Var::from_tensor(&x).unwrap();
        let logits = model.forward_t(xv.as_tensor(), true).unwrap();
        let per = tulip_models::loss::cross_entropy_per_example(&logits, &y).unwrap();
        let grads = per.sum_all().unwrap().backward().unwrap();
        let g = grads.get(xv.as_tensor()).unwrap();
        let half_mean_sq = (row_norms(g, Norm::L2)
            .unwrap()
            .sqr()
            .unwrap()
            .mean(0)
            .unwrap()
            * 0.5)
            .unwrap();
        half_mean_sq.backward().unwrap()
    };
    let mut worst = Vec::new();
    for h in [1e-3, 1e-4] {
        let fd = penalty_at(&model, &FiniteDifferencePenalty::new(h).unwrap(), &x, &y)
            .backward()
            .unwrap();
        let (mut diff, mut size) = (0f64, 0f64);
        for p in model.params().trainable() {
            let a = vec1(exact.get(p.var.as_tensor()).unwrap());
            let b = vec1(fd.get(p.var.as_tensor()).unwrap());
            for (a, b) in a.iter().zip(&b) {
                diff = diff.max((a - b).abs());
                size = size.max(a.abs());
            }
        }
        worst.push(diff / size);
    }
    assert!(worst[1] < 1e-3, "relative gradient errors {worst:?}");
    assert!(
        worst[1] < 0.2 * worst[0],
        "not converging as h → 0: {worst:?}"
    );
}

#[test]
fn exact_penalty_is_the_scaled_input_gradient_norm() {
    enable_second_order_gradients();
    // Without batch norm the examples are independent, so row i of ∇_x L is ∇ℓ_i / B.
    let model = TinyConv::new(8, false, false);
    let (b, x, y) = (5, images(5, TINY_SHAPE, 3), labels(5, TINY_CLASSES, 2));
    let g = input_gradient(&model, &x, &y, true).unwrap().gradient;
    for norm in [Norm::L1, Norm::L2, Norm::Linf] {
        let per: Vec<f64> = vec1(&row_norms(&g, norm).unwrap());
        let max = per.iter().cloned().fold(0.0, f64::max) / b as f64;
        let mean = per.iter().sum::<f64>() / (b * b) as f64;
        for (summary, expected) in [(Summary::Max, max), (Summary::Mean, mean)] {
            let p = LipschitzPenalty::new(norm, summary).unwrap();
            let got = scalar(&penalty_at(&model, &p, &x, &y));
            assert!(
                (got - expected).abs() < 1e-12 * expected.max(1.0),
                "{norm} {summary:?}: {got} vs {expected}"
            );
        }
    }
}

#[test]
fn finite_difference_penalty_approaches_half_mean_squared_gradient_norm() {
    // No batch norm: per-example losses are independent, so the limit is the per-example,
    // unscaled squared norm.
    let model = TinyConv::new(9, false, false);
    let (x, y) = (images(6, TINY_SHAPE, 4), labels(6, TINY_CLASSES, 0));
    let g = input_gradient(&model, &x, &y, true).unwrap().gradient;
    let norms = vec1(&row_norms(&g, Norm::L2).unwrap());
    let exact = 0.5 * norms.iter().map(|n| n * n).sum::<f64>() / norms.len() as f64;
    let errors: Vec<f64> = [1e-2, 1e-3, 1e-4]
        .iter()
        .map(|&h| {
            let p = FiniteDifferencePenalty::new(h).unwrap();
            (scalar(&penalty_at(&model, &p, &x, &y)) - exact).abs()
        })
        .collect();
    // First-order accuracy: ten times smaller h, about ten times smaller error.
    for w in errors.windows(2) {
        let ratio = w[1] / w[0];
        assert!(
            (0.05..0.2).contains(&ratio),
            "errors {errors:?} (exact {exact})"
        );
    }
    assert!(
        errors[2] < 1e-4 * exact,
        "errors {errors:?} (exact {exact})"
    );
}

#[test]
fn penalties_are_zero_for_a_model_that_ignores_its_input() {
    enable_second_order_gradients();
    let (x, y) = (images(4, TINY_SHAPE, 1), labels(4, TINY_CLASSES, 3));
    for touch_input in [false, true] {
        let model = Constant::new(touch_input);
        let penalties: Vec<Box<dyn Penalty>> = vec![
            Box::new(LipschitzPenalty::new(Norm::L2, Summary::Max).unwrap()),
            Box::new(LipschitzPenalty::new(Norm::L1, Summary::Mean).unwrap()),
            Box::new(LipschitzPenalty::new(Norm::Linf, Summary::Max).unwrap()),
            Box::new(FiniteDifferencePenalty::default()),
        ];
        for p in &penalties {
            let value = penalty_at(&model, p.as_ref(), &x, &y);
            assert_eq!(
                scalar(&value),
                0.0,
                "{} (touch_input={touch_input})",
                p.name()
            );
            // Its parameter gradient is zero (or absent), never NaN.
            let bias = model.params().get("bias").unwrap();
            if let Some(g) = value.backward().unwrap().get(bias.var.as_tensor()) {
                assert!(vec1(g).iter().all(|v| *v == 0.0), "{}: {g}", p.name());
            }
        }
    }
}

#[test]
fn input_penalties_need_a_variable_input() {
    enable_second_order_gradients();
    let model = TinyConv::new(1, true, false);
    let (x, y) = (images(2, TINY_SHAPE, 1), labels(2, TINY_CLASSES, 0));
    let logits = model.forward_t(&x, true).unwrap();
    let loss = cross_entropy(&logits, &y).unwrap();
    let inputs = PenaltyInputs {
        model: &model,
        x: &x,
        labels: &y,
        logits: &logits,
        loss: &loss,
    };
    let exact = LipschitzPenalty::paper().unwrap();
    let fd = FiniteDifferencePenalty::default();
    for p in [&exact as &dyn Penalty, &fd] {
        assert!(p.needs_input_graph());
        match p.value(&inputs) {
            Err(PenaltyError::InputNotVariable { penalty }) => assert_eq!(penalty, p.name()),
            other => panic!("{}: expected InputNotVariable, got {other:?}", p.name()),
        }
    }
    let tikhonov = TikhonovPenalty::of_params(model.params(), TikhonovScope::default()).unwrap();
    assert!(!tikhonov.needs_input_graph());
    assert!(tikhonov.value(&inputs).is_ok());
}

#[test]
fn penalty_method_builds_each_kind() {
    enable_second_order_gradients();
    let exact = PenaltyMethod::Exact
        .build(Norm::L2, Summary::Max, 0.01)
        .unwrap();
    assert_eq!(exact.name(), "lipschitz");
    let fd = PenaltyMethod::FiniteDifference
        .build(Norm::L2, Summary::Mean, 0.01)
        .unwrap();
    assert_eq!(fd.name(), "lipschitz_fd");
    for h in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            PenaltyMethod::FiniteDifference.build(Norm::L2, Summary::Mean, h),
            Err(PenaltyError::InvalidConfig(_))
        ));
    }
}

fn sum_sq(model: &dyn Classifier, names: &[&str]) -> f64 {
    names
        .iter()
        .map(|n| {
            vec1(model.params().get(n).unwrap().var.as_tensor())
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn tikhonov_sums_the_squares_of_its_scope_and_never_buffers() {
    let model = TinyConv::new(2, true, true);
    // Make the buffers large: they must not count.
    for p in model.params().all() {
        if p.kind == ParamKind::Buffer {
            p.var
                .set(&(p.var.as_tensor().ones_like().unwrap() * 1e3).unwrap())
                .unwrap();
        }
    }
    let all = [
        "conv1.weight",
        "conv1.bias",
        "bn1.weight",
        "bn1.bias",
        "conv2.weight",
        "conv2.bias",
        "fc.weight",
        "fc.bias",
        "t",
    ];
    let weights = ["conv1.weight", "conv2.weight", "fc.weight"];
    let trainable: Vec<&str> = model
        .params()
        .trainable()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(trainable, all, "test model layout changed");

    assert_eq!(TikhonovScope::default(), TikhonovScope::AllTrainable);
    let default = TikhonovPenalty::of_params(model.params(), TikhonovScope::default()).unwrap();
    let got = scalar(&default.sum_of_squares().unwrap());
    let want = sum_sq(&model, &all);
    assert!((got - want).abs() < 1e-12 * want, "{got} vs {want}");

    let wo = TikhonovPenalty::of_params(model.params(), TikhonovScope::WeightsOnly).unwrap();
    let got = scalar(&wo.sum_of_squares().unwrap());
    let want = sum_sq(&model, &weights);
    assert!((got - want).abs() < 1e-12 * want, "{got} vs {want}");

    // The gradient is 2θ on the scope, nothing on buffers.
    let value = default.sum_of_squares().unwrap();
    let grads = value.backward().unwrap();
    for p in model.params().all() {
        match p.kind {
            ParamKind::Trainable => {
                let g = vec1(grads.get(p.var.as_tensor()).unwrap());
                let theta = vec1(p.var.as_tensor());
                assert!(g
                    .iter()
                    .zip(&theta)
                    .all(|(g, t)| (g - 2.0 * t).abs() < 1e-12));
            }
            ParamKind::Buffer => assert!(grads.get(p.var.as_tensor()).is_none(), "{}", p.name),
        }
    }
}

#[test]
fn tikhonov_on_a_zoo_model_skips_batch_norm_statistics() {
    use tulip_models::{Architecture, Model, ModelConfig};
    let mut cfg = ModelConfig::new(Architecture::ResNet22, 10, (1, 8, 8));
    cfg.tanh = true;
    let model = Model::init(&cfg, 1, DType::F64, &common::DEV).unwrap();
    let all: f64 = model
        .params()
        .trainable()
        .map(|p| vec1(p.var.as_tensor()).iter().map(|v| v * v).sum::<f64>())
        .sum();
    let got = scalar(
        &TikhonovPenalty::of_params(model.params(), TikhonovScope::AllTrainable)
            .unwrap()
            .sum_of_squares()
            .unwrap(),
    );
    assert!((got - all).abs() < 1e-10 * all);
    let weights: f64 = model
        .params()
        .all()
        .iter()
        .filter(|p| p.kind == ParamKind::Trainable && p.var.rank() >= 2)
        .map(|p| vec1(p.var.as_tensor()).iter().map(|v| v * v).sum::<f64>())
        .sum();
    let got = scalar(
        &TikhonovPenalty::of_params(model.params(), TikhonovScope::WeightsOnly)
            .unwrap()
            .sum_of_squares()
            .unwrap(),
    );
    assert!((got - weights).abs() < 1e-10 * weights);
    assert!(weights < all);
}

#[test]
fn input_gradient_matches_the_closed_form_of_an_affine_model() {
    let shape = (2, 3, 3);
    let model = Affine::new(4, shape, 5);
    let (x, y) = (images(3, shape, 9), labels(3, 5, 1));
    let InputGradient {
        losses,
        gradient: g,
        ..
    } = input_gradient(&model, &x, &y, false).unwrap();
    assert_eq!(g.dims(), x.dims());
    assert_eq!(losses.dims(), &[3]);
    let logits = model.forward_t(&x, false).unwrap();
    let p = candle_nn::ops::softmax_last_dim(&logits).unwrap();
    let onehot = tulip_models::loss::one_hot(&y, 5, &p).unwrap();
    let want = (p - onehot).unwrap().matmul(&model.weight).unwrap();
    let diff = vec1(&(want - g.reshape((3, ())).unwrap()).unwrap());
    assert!(diff.iter().all(|d| d.abs() < 1e-12), "{diff:?}");
}

#[test]
fn evaluation_norms_of_an_affine_model_are_its_largest_row_norm() {
    let shape = (1, 4, 4);
    let model = Affine::new(7, shape, 3);
    let rows = vec1(&row_norms(&model.weight, Norm::L2).unwrap());
    let want = rows.iter().cloned().fold(0.0, f64::max);
    let j = jacobian_norm(&model, &images(3, shape, 2)).unwrap();
    assert!((j - want).abs() < 1e-12, "{j} vs {want}");
    let w = weight_product_norm(&model, &images(1, shape, 0)).unwrap();
    assert!((w - want).abs() < 1e-12, "{w} vs {want}");
}

#[test]
fn a_row_holding_nan_has_a_nan_norm_and_a_nan_maximum() {
    let nan = f64::NAN;
    // NaN first, in the middle and last in its row (Candle's `max` keeps only a first NaN),
    // beside a finite row and a zero row that keep their norms.
    let v = vec![
        nan, 1.0, 2.0, //
        3.0, -4.0, 0.0, //
        1.0, nan, -2.0, //
        0.0, 0.0, 0.0, //
        5.0, 1.0, nan,
    ];
    let g = Tensor::from_vec(v, (5, 3), &common::DEV).unwrap();
    for (norm, finite) in [(Norm::L1, 7.0), (Norm::L2, 5.0), (Norm::Linf, 4.0)] {
        let n = vec1(&row_norms(&g, norm).unwrap());
        for i in [0, 2, 4] {
            assert!(n[i].is_nan(), "norm {norm}, row {i}: {n:?}");
        }
        assert_eq!((n[1], n[3]), (finite, 0.0), "norm {norm}");
        // The penalty's maximum over the batch does not skip them either.
        let max = scalar(&Summary::Max.apply(&row_norms(&g, norm).unwrap()).unwrap());
        assert!(max.is_nan(), "norm {norm}: max {max}");
    }
    let finite = Tensor::new(&[1.0f64, 3.0, 2.0], &common::DEV).unwrap();
    assert_eq!(scalar(&Summary::Max.apply(&finite).unwrap()), 3.0);
    for v in [[nan, 1.0, 2.0], [1.0, nan, 2.0], [1.0, 2.0, nan]] {
        let t = Tensor::new(&v, &common::DEV).unwrap();
        assert!(scalar(&Summary::Max.apply(&t).unwrap()).is_nan(), "{v:?}");
    }
}

#[test]
fn evaluation_norms_of_a_model_with_a_nan_weight_are_nan() {
    // Class 1's row holds the NaN: neither norm may report class 0's or 2's as the largest.
    let shape = (1, 2, 2);
    let w = vec![
        vec![1.0, 2.0, 0.0, 0.0],
        vec![0.5, f64::NAN, 0.0, 0.0],
        vec![0.0, 0.0, 3.0, 0.0],
    ];
    let model = Affine::from_weights(&w, &[0.0, 0.0, 0.0], shape, DType::F64);
    let j = jacobian_norm(&model, &images(2, shape, 1)).unwrap();
    assert!(j.is_nan(), "jacobian norm {j}");
    let p = weight_product_norm(&model, &images(1, shape, 0)).unwrap();
    assert!(p.is_nan(), "weight-product norm {p}");
}

#[test]
fn weight_product_norm_is_the_jacobian_of_the_linearised_model() {
    let model = TinyConv::new(3, true, true);
    // Put the running statistics somewhere non-trivial.
    for s in 0..3 {
        model.forward_t(&images(8, TINY_SHAPE, s), true).unwrap();
    }
    let xv = Var::from_tensor(&images(1, TINY_SHAPE, 0)).unwrap();
    let z = model.forward_linearised(xv.as_tensor()).unwrap();
    let mut want = 0f64;
    for k in 0..TINY_CLASSES {
        let g = z
            .narrow(1, k, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let n = vec1(&row_norms(g.get(xv.as_tensor()).unwrap(), Norm::L2).unwrap())[0];
        want = want.max(n);
    }
    let got = weight_product_norm(&model, &images(1, TINY_SHAPE, 0)).unwrap();
    assert!((got - want).abs() < 1e-10 * want, "{got} vs {want}");
}

#[test]
fn jacobian_norm_matches_finite_differences_of_the_logits() {
    let model = TinyConv::new(4, true, true);
    for s in 0..3 {
        model.forward_t(&images(8, TINY_SHAPE, s), true).unwrap();
    }
    let x = images(2, TINY_SHAPE, 5);
    let got = jacobian_norm(&model, &x).unwrap();
    // Central differences of each logit with respect to each pixel, in evaluation mode.
    let base = vec1(&x);
    let n = base.len() / 2;
    let h = 1e-6;
    let mut jac = vec![0f64; 2 * TINY_CLASSES * n]; // [image][class][pixel]
    for j in 0..base.len() {
        let eval = |d: f64| {
            let mut v = base.clone();
            v[j] += d;
            let xt = Tensor::from_vec(v, x.shape().clone(), &common::DEV).unwrap();
            vec1(&model.forward_t(&xt, false).unwrap())
        };
        let (plus, minus) = (eval(h), eval(-h));
        let (i, pixel) = (j / n, j % n);
        for k in 0..TINY_CLASSES {
            let idx = i * TINY_CLASSES + k;
            jac[idx * n + pixel] = (plus[idx] - minus[idx]) / (2.0 * h);
        }
    }
    let want = jac
        .chunks(n)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .fold(0.0, f64::max);
    assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
}

#[test]
fn names_on_the_command_line_and_in_config_files() {
    use clap::ValueEnum;
    let cli =
        |v: &dyn Fn() -> Option<clap::builder::PossibleValue>| v().unwrap().get_name().to_string();
    assert_eq!(cli(&|| Norm::L1.to_possible_value()), "1");
    assert_eq!(cli(&|| Norm::L2.to_possible_value()), "2");
    assert_eq!(cli(&|| Norm::Linf.to_possible_value()), "inf");
    assert_eq!(cli(&|| Summary::Max.to_possible_value()), "max");
    assert_eq!(
        cli(&|| PenaltyMethod::FiniteDifference.to_possible_value()),
        "finite-difference"
    );
    assert_eq!(cli(&|| PenaltyMethod::Exact.to_possible_value()), "exact");
    assert_eq!(
        cli(&|| TikhonovScope::WeightsOnly.to_possible_value()),
        "weights-only"
    );
    assert_eq!(
        cli(&|| TikhonovScope::AllTrainable.to_possible_value()),
        "all-trainable"
    );
    assert_eq!(Norm::from_str("inf", false).unwrap(), Norm::Linf);
    let json = serde_json::to_string(&(
        Norm::Linf,
        Summary::Mean,
        PenaltyMethod::FiniteDifference,
        TikhonovScope::WeightsOnly,
    ))
    .unwrap();
    assert_eq!(
        json,
        r#"["linf","mean","finite-difference","weights-only"]"#
    );
    let back: (Norm, Summary, PenaltyMethod, TikhonovScope) = serde_json::from_str(&json).unwrap();
    assert_eq!(
        back,
        (
            Norm::Linf,
            Summary::Mean,
            PenaltyMethod::FiniteDifference,
            TikhonovScope::WeightsOnly
        )
    );
}

fn rows_strategy() -> impl Strategy<Value = (usize, Vec<f64>)> {
    (1usize..4, 1usize..7).prop_flat_map(|(b, n)| {
        (
            Just(n),
            proptest::collection::vec(prop_oneof![Just(0.0), -3.0f64..3.0], b * n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn row_norms_and_steepest_directions_agree_with_hand_computation((n, v) in rows_strategy()) {
        let b = v.len() / n;
        let g = Tensor::from_vec(v.clone(), (b, n), &common::DEV).unwrap();
        for norm in [Norm::L1, Norm::L2, Norm::Linf] {
            let got = vec1(&row_norms(&g, norm).unwrap());
            let d = vec1(&steepest_ascent_direction(&g, norm).unwrap());
            for i in 0..b {
                let r = &v[i * n..(i + 1) * n];
                let want = match norm {
                    Norm::L1 => r.iter().map(|x| x.abs()).sum::<f64>(),
                    Norm::L2 => r.iter().map(|x| x * x).sum::<f64>().sqrt(),
                    _ => r.iter().fold(0.0f64, |m, x| m.max(x.abs())),
                };
                prop_assert!((got[i] - want).abs() <= 1e-12 * (1.0 + want));
                let di = &d[i * n..(i + 1) * n];
                // ⟨g, d⟩ = ‖g‖ and d in the dual unit ball (on its sphere for nonzero g).
                let inner: f64 = r.iter().zip(di).map(|(a, b)| a * b).sum();
                prop_assert!((inner - want).abs() <= 1e-12 * (1.0 + want));
                let dual = match norm.dual() {
                    Norm::L1 => di.iter().map(|x| x.abs()).sum::<f64>(),
                    Norm::L2 => di.iter().map(|x| x * x).sum::<f64>().sqrt(),
                    _ => di.iter().fold(0.0f64, |m, x| m.max(x.abs())),
                };
                if want == 0.0 {
                    prop_assert!(di.iter().all(|x| *x == 0.0));
                } else if norm != Norm::L1 {
                    prop_assert!((dual - 1.0).abs() < 1e-12);
                } else {
                    prop_assert!(dual <= 1.0);
                }
            }
        }
    }
}
