//! The summary statistics against hand-computed values.

use candle_core::{DType, Tensor};
use candle_nn::ModuleT;
use tulip_data::Split;
use tulip_eval::{summary, summary_of_tensors, SummaryModel, SummaryOptions};
use tulip_models::testing::{Affine, TinyConv, DEV, TINY_SHAPE};
use tulip_models::Classifier;

const W: [[f64; 4]; 3] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 2.0, 0.0, 0.0],
    [0.0, 0.0, 0.5, 3.0],
];
const B: [f64; 3] = [0.1, -0.2, 0.0];

/// `f(x) = W x + b` on 1×2×2 images with the weights above: row norms 1, 2, √9.25.
fn affine() -> Affine {
    let m = Affine::new(0, (1, 2, 2), 3);
    let p = m.params();
    let w: Vec<f64> = W.iter().flatten().copied().collect();
    p.get("weight")
        .unwrap()
        .var
        .set(&Tensor::from_vec(w, (3, 4), &DEV).unwrap())
        .unwrap();
    p.get("bias")
        .unwrap()
        .var
        .set(&Tensor::new(&B, &DEV).unwrap())
        .unwrap();
    m
}

const X: [[f64; 4]; 5] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 0.2, 0.3],
    [0.3, 0.3, 0.3, 0.3],
    [0.9, 0.1, 0.0, 0.0],
];
const Y: [u32; 5] = [0, 1, 2, 0, 1];

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn affine_model_norms_margin_and_bound_equal_hand_computed_values() {
    let model = affine();
    let x = Tensor::from_vec(
        X.iter().flatten().copied().collect::<Vec<_>>(),
        (5, 1, 2, 2),
        &DEV,
    )
    .unwrap();
    let y = Tensor::new(&Y, &DEV).unwrap();
    let mut progress = Vec::new();
    let r = summary_of_tensors(
        &SummaryModel::of_classifier(&model).unwrap(),
        &x,
        &y,
        &SummaryOptions {
            batch_size: 2,
            tanh_scale: Some(1.5),
            jacobian_images: None,
        },
        &mut |d, t| progress.push((d, t)),
    )
    .unwrap();
    assert_eq!(progress, vec![(2, 5), (4, 5), (5, 5)]);

    // By hand: logits, probabilities, loss, gradient Wᵀ(p − e_y), margins.
    let row_norm = |r: &[f64; 4]| r.iter().map(|v| v * v).sum::<f64>().sqrt();
    let max_row = W.iter().map(row_norm).fold(0.0, f64::max);
    let (mut correct, mut loss, mut lip, mut margins) = (0, 0.0, 0f64, Vec::new());
    for (xi, &yi) in X.iter().zip(&Y) {
        let z: Vec<f64> = (0..3)
            .map(|k| (0..4).map(|j| W[k][j] * xi[j]).sum::<f64>() + B[k])
            .collect();
        let p = softmax(&z);
        loss += -p[yi as usize].ln();
        let g: Vec<f64> = (0..4)
            .map(|j| {
                (0..3)
                    .map(|k| W[k][j] * (p[k] - f64::from(u8::from(k == yi as usize))))
                    .sum()
            })
            .collect();
        lip = lip.max(g.iter().map(|v| v * v).sum::<f64>().sqrt());
        let pred = (0..3).fold(0, |b, k| if z[k] > z[b] { k } else { b });
        if pred == yi as usize {
            correct += 1;
            let mut q = p.clone();
            q.sort_by(|a, b| b.total_cmp(a));
            margins.push(q[0] - q[1]);
        }
    }
    let s = &r.summary;
    assert_eq!(s.images, 5);
    assert_eq!(s.correct, correct);
    assert!(
        correct > 0 && correct < 5,
        "the set should mix right and wrong"
    );
    assert!((s.test_error_percent - 100.0 * (5 - correct) as f64 / 5.0).abs() < 1e-12);
    assert!((s.mean_loss - loss / 5.0).abs() < 1e-12);
    assert!((s.lipschitz_estimate - lip).abs() < 1e-12);
    assert!(
        (s.jacobian_norm - max_row).abs() < 1e-12,
        "{}",
        s.jacobian_norm
    );
    assert!((s.weight_product_norm.unwrap() - max_row).abs() < 1e-12);
    let min_margin = margins.iter().copied().fold(f64::INFINITY, f64::min);
    assert!((s.min_margin.unwrap() - min_margin).abs() < 1e-12);
    assert!((s.distance_lower_bound.unwrap() - min_margin / (2.0 * max_row)).abs() < 1e-12);
    let frobenius = W.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        (s.weight_norm.unwrap() - frobenius).abs() < 1e-12,
        "bias excluded"
    );
    assert_eq!(s.tanh_scale, Some(1.5));

    assert_eq!(r.certified.len(), correct);
    for (c, m) in r.certified.iter().zip(&margins) {
        assert_eq!(c.label, Y[c.index]);
        assert!((c.margin - m).abs() < 1e-12);
        assert!((c.lower_bound - m / (2.0 * max_row)).abs() < 1e-12);
    }

    let table = s.to_table();
    assert!(
        table.contains("unscaled") && table.contains("tanh scale t"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::to_value(s).unwrap();
    assert_eq!(json["correct"], correct);
    assert_eq!(json["tanh_scale"], 1.5);
}

/// Error and loss of a small convolutional model on a byte split, against a per-image
/// forward pass and a log-sum-exp written out here.
#[test]
fn tiny_model_error_and_loss_match_an_independent_computation() {
    let model = TinyConv::new(7, true, true);
    let n = 23;
    let (c, h, w) = TINY_SHAPE;
    let images: Vec<u8> = (0..n * c * h * w)
        .map(|i| ((i * 37 + 11) % 256) as u8)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let split = Split::new(images, labels, TINY_SHAPE).unwrap();
    let r = summary(
        &SummaryModel::of_classifier(&model).unwrap(),
        &split,
        &SummaryOptions {
            batch_size: 5,
            tanh_scale: None,
            jacobian_images: None,
        },
        &mut |_, _| {},
    )
    .unwrap();
    let (mut wrong, mut loss) = (0, 0.0);
    for i in 0..n {
        let x = Tensor::from_vec(split.image_f32(i), (1, c, h, w), &DEV)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let z: Vec<f64> = model
            .forward_t(&x, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let y = usize::from(split.labels[i]);
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        loss += m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - z[y];
        if (0..3).any(|k| z[k] > z[y]) {
            wrong += 1;
        }
    }
    let s = r.summary;
    assert_eq!(s.images, n);
    assert!((s.test_error_percent - 100.0 * wrong as f64 / n as f64).abs() < 1e-9);
    assert!((s.mean_loss - loss / n as f64).abs() < 1e-9);
    assert!(s.lipschitz_estimate > 0.0 && s.jacobian_norm > 0.0);
    assert!(s.weight_product_norm.unwrap() > 0.0 && s.weight_norm.unwrap() > 0.0);
    assert_eq!(s.jacobian_images, n);

    // The Jacobian norm over the first 7 images only (a limit inside the second batch)
    // is the maximum of the per-image norms over those images.
    let limited = summary(
        &SummaryModel::of_classifier(&model).unwrap(),
        &split,
        &SummaryOptions {
            batch_size: 5,
            tanh_scale: None,
            jacobian_images: Some(7),
        },
        &mut |_, _| {},
    )
    .unwrap()
    .summary;
    let first7: Vec<f32> = (0..7).flat_map(|i| split.image_f32(i)).collect();
    let x7 = Tensor::from_vec(first7, (7, c, h, w), &DEV)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let want = tulip_penalties::jacobian_norm(&model, &x7).unwrap();
    assert_eq!(limited.jacobian_images, 7);
    assert!((limited.jacobian_norm - want).abs() < 1e-12);
    assert!(limited.jacobian_norm <= s.jacobian_norm + 1e-12);
    assert_eq!(limited.mean_loss, s.mean_loss);
}

#[test]
fn bad_input_is_an_error() {
    let model = affine();
    let x = Tensor::zeros((2, 1, 2, 2), DType::F64, &DEV).unwrap();
    let y = Tensor::new(&[0u32, 1], &DEV).unwrap();
    let zero = SummaryOptions {
        batch_size: 0,
        ..SummaryOptions::default()
    };
    assert!(summary_of_tensors(
        &SummaryModel::of_classifier(&model).unwrap(),
        &x,
        &y,
        &zero,
        &mut |_, _| {}
    )
    .is_err());
    let y3 = Tensor::new(&[0u32, 1, 2], &DEV).unwrap();
    let ok = SummaryOptions::default();
    assert!(summary_of_tensors(
        &SummaryModel::of_classifier(&model).unwrap(),
        &x,
        &y3,
        &ok,
        &mut |_, _| {}
    )
    .is_err());
    let empty = Split::new(Vec::new(), Vec::new(), (1, 2, 2)).unwrap();
    assert!(summary(
        &SummaryModel::of_classifier(&model).unwrap(),
        &empty,
        &ok,
        &mut |_, _| {}
    )
    .is_err());
}

/// A diverged model (one NaN weight) has no summary: the error names the tensor. Without
/// the check the NaN gradient norms read as 0 and the summary looks healthy.
#[test]
fn a_model_with_a_nan_weight_is_refused_by_name() {
    let model = TinyConv::new(7, true, true);
    let w = &model.params().get("conv2.weight").unwrap().var;
    let mut values: Vec<f64> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    values[3] = f64::NAN;
    w.set(&Tensor::from_vec(values, w.dims(), &DEV).unwrap())
        .unwrap();
    let (c, h, wd) = TINY_SHAPE;
    let split = Split::new(vec![100; 4 * c * h * wd], vec![0, 1, 2, 0], TINY_SHAPE).unwrap();
    let err = summary(
        &SummaryModel::of_classifier(&model).unwrap(),
        &split,
        &SummaryOptions::default(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, tulip_eval::EvalError::NonFinite(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("conv2.weight"), "{err}");
}

/// Finite weights whose outputs overflow: an infinite logit is an error, not a summary
/// with a NaN loss (written as `null`).
#[test]
fn an_overflowing_output_is_an_error() {
    let big = vec![vec![1e308; 4], vec![0.0; 4], vec![0.0; 4]];
    let model = Affine::from_weights(&big, &[0.0, 0.0, 0.0], (1, 2, 2), DType::F64);
    let x = Tensor::ones((2, 1, 2, 2), DType::F64, &DEV).unwrap();
    let y = Tensor::new(&[1u32, 2], &DEV).unwrap();
    let err = summary_of_tensors(
        &SummaryModel::of_classifier(&model).unwrap(),
        &x,
        &y,
        &SummaryOptions::default(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, tulip_eval::EvalError::NonFinite(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("output for image 0"), "{err}");
}

/// A Jacobian limit of 0 images is refused, for `summary` and `summary_of_tensors`
/// alike: computed, it would report a Jacobian norm of 0 over no image.
#[test]
fn a_jacobian_limit_of_zero_images_is_an_error() {
    let model = affine();
    let none = SummaryOptions {
        jacobian_images: Some(0),
        ..SummaryOptions::default()
    };
    let x = Tensor::from_vec(
        X.iter().flatten().copied().collect::<Vec<_>>(),
        (5, 1, 2, 2),
        &DEV,
    )
    .unwrap();
    let y = Tensor::new(&Y, &DEV).unwrap();
    let err = summary_of_tensors(
        &SummaryModel::of_classifier(&model).unwrap(),
        &x,
        &y,
        &none,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, tulip_eval::EvalError::InvalidInput(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("Jacobian"), "{err}");
    let split = Split::new(vec![10; 3 * 4], vec![0, 1, 2], (1, 2, 2)).unwrap();
    let err = summary(
        &SummaryModel::of_classifier(&model).unwrap(),
        &split,
        &none,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("Jacobian"), "{err}");
    // One image is the smallest limit, and then the norm is that image's.
    let one = SummaryOptions {
        jacobian_images: Some(1),
        ..SummaryOptions::default()
    };
    let s = summary(
        &SummaryModel::of_classifier(&model).unwrap(),
        &split,
        &one,
        &mut |_, _| {},
    )
    .unwrap()
    .summary;
    assert_eq!(s.jacobian_images, 1);
    assert!((s.jacobian_norm - 9.25f64.sqrt()).abs() < 1e-12, "{s:?}");
}

/// A bare `ModuleT` (no tensors, no linearised form) gets the statistics of its forward
/// pass, the same as the full model's, and none of those that need more; given its
/// tensors and linearised form one by one, it gets each statistic back.
#[test]
fn a_bare_module_gets_the_forward_statistics_and_no_more() {
    let model = TinyConv::new(3, true, false);
    let (x, y) = (
        tulip_models::testing::images(12, TINY_SHAPE, 4),
        tulip_models::testing::labels(12, 3, 1),
    );
    let options = SummaryOptions::default();
    let run =
        |m: &SummaryModel<'_>| summary_of_tensors(m, &x, &y, &options, &mut |_, _| {}).unwrap();
    let full = run(&SummaryModel::of_classifier(&model).unwrap());
    let bare = run(&SummaryModel::new(&model, DType::F64, &DEV));
    let (f, b) = (&full.summary, &bare.summary);
    assert_eq!((b.images, b.correct), (f.images, f.correct));
    assert_eq!(b.mean_loss, f.mean_loss);
    assert_eq!(b.lipschitz_estimate, f.lipschitz_estimate);
    assert_eq!(b.jacobian_norm, f.jacobian_norm);
    assert_eq!(b.min_margin, f.min_margin);
    assert!(f.weight_product_norm.is_some() && f.weight_norm.is_some());
    assert_eq!((b.weight_product_norm, b.weight_norm), (None, None));
    assert_eq!(b.distance_lower_bound, None);
    assert!(bare.certified.is_empty() && !full.certified.is_empty());

    let linearised = |x: &Tensor| tulip_models::Linearised::forward_linearised(&model, x);
    let with_linearised =
        run(&SummaryModel::new(&model, DType::F64, &DEV).with_linearised(&linearised));
    assert_eq!(
        with_linearised.summary.weight_product_norm,
        f.weight_product_norm
    );
    assert_eq!(with_linearised.certified, full.certified);
    let named = model
        .params()
        .all()
        .iter()
        .map(|p| (p.name.clone(), p.var.as_tensor().clone()));
    let with_tensors = run(&SummaryModel::new(&model, DType::F64, &DEV).with_tensors(named));
    assert_eq!(with_tensors.summary.weight_norm, f.weight_norm);
}
