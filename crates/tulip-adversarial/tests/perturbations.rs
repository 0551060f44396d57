//! Integration tests of the training perturbations: their geometry (property tests), their
//! first-order effect on the loss, evaluation mode, PGD's determinism and configuration.

mod common;

use candle_core::Tensor;
use candle_nn::ModuleT;
use common::{images, labels, vec1, Affine, Gated, TinyConv, DEV, TINY_CLASSES, TINY_SHAPE};
use proptest::prelude::*;
use tulip_adversarial::{
    AdversarialError, Fgsm, GradientAscent, MaxEntry, Perturbation, PerturbationKind, PgdConfig,
    PgdLinf,
};
use tulip_models::loss::cross_entropy_per_example;
use tulip_models::Classifier;
use tulip_penalties::{input_gradient, row_norms, Norm};

const SHAPE: (usize, usize, usize) = (2, 3, 3);
const N: usize = 18;
const CLASSES: usize = 4;

fn losses(model: &dyn Classifier, x: &Tensor, y: &Tensor) -> Vec<f64> {
    vec1(&cross_entropy_per_example(&model.forward_t(x, false).unwrap(), y).unwrap())
}

/// Rows of `a − b`, flattened per image.
fn deltas(a: &Tensor, b: &Tensor, n: usize) -> Vec<Vec<f64>> {
    vec1(&(a - b).unwrap())
        .chunks(n)
        .map(<[f64]>::to_vec)
        .collect()
}

fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn j1_moves_each_image_by_epsilon_in_l2(seed in 0u64..1000, b in 1usize..5, eps in 1e-3f64..1.0) {
        let model = Affine::new(seed, SHAPE, CLASSES);
        let (x, y) = (images(b, SHAPE, seed + 1), labels(b, CLASSES, seed));
        let adv = Fgsm::new(eps).unwrap().perturb(&model, &x, &y).unwrap();
        prop_assert!(!adv.is_variable());
        for d in deltas(&adv, &x, N) {
            prop_assert!((l2(&d) - eps).abs() < 1e-12, "‖δ‖₂ = {} vs ε = {eps}", l2(&d));
            let per_pixel = eps / (N as f64).sqrt();
            prop_assert!(d.iter().all(|v| (v.abs() - per_pixel).abs() < 1e-12));
        }
    }

    #[test]
    fn j2_moves_by_epsilon_and_leaves_zero_gradient_images_alone(
        seed in 0u64..1000, b in 1usize..6, eps in 1e-3f64..1.0,
    ) {
        let model = Gated { inner: Affine::new(seed, SHAPE, CLASSES), gates: vec![1.0, 0.0, 2.0] };
        let (x, y) = (images(b, SHAPE, seed + 1), labels(b, CLASSES, seed));
        let before = vec1(&x);
        for p in [
            Box::new(GradientAscent::new(eps).unwrap()) as Box<dyn Perturbation>,
            Box::new(Fgsm::new(eps).unwrap()),
            Box::new(MaxEntry::new(eps).unwrap()),
        ] {
            let adv = p.perturb(&model, &x, &y).unwrap();
            let after = vec1(&adv);
            for (i, d) in deltas(&adv, &x, N).iter().enumerate() {
                if i % 3 == 1 {
                    // Zero gradient: bit-for-bit unchanged.
                    prop_assert_eq!(&after[i * N..(i + 1) * N], &before[i * N..(i + 1) * N]);
                } else if p.name() == "j2" {
                    prop_assert!((l2(d) - eps).abs() < 1e-12, "‖δ‖₂ = {} vs ε = {eps}", l2(d));
                }
            }
        }
    }

    #[test]
    fn jinf_changes_exactly_one_pixel_per_image_by_epsilon(
        seed in 0u64..1000, b in 1usize..5, eps in 1e-3f64..1.0,
    ) {
        let model = Affine::new(seed, SHAPE, CLASSES);
        let (x, y) = (images(b, SHAPE, seed + 1), labels(b, CLASSES, seed));
        let adv = MaxEntry::new(eps).unwrap().perturb(&model, &x, &y).unwrap();
        let g = input_gradient(&model, &x, &y, false).unwrap().gradient;
        let g = vec1(&g);
        for (i, d) in deltas(&adv, &x, N).iter().enumerate() {
            let moved: Vec<usize> = (0..N).filter(|&j| d[j] != 0.0).collect();
            prop_assert_eq!(moved.len(), 1);
            let k = moved[0];
            prop_assert!((d[k].abs() - eps).abs() < 1e-12);
            let gi = &g[i * N..(i + 1) * N];
            // The moved pixel has the largest |gradient|, moved in the gradient's direction.
            prop_assert!(gi.iter().all(|v| v.abs() <= gi[k].abs()));
            prop_assert!(d[k] * gi[k] > 0.0);
        }
    }

    #[test]
    fn pgd_stays_in_the_epsilon_ball_and_the_unit_box(
        seed in 0u64..1000,
        b in 1usize..4,
        eps in 1e-3f64..0.5,
        steps in 1usize..5,
        step_size in 1e-3f64..0.5,
        random_start in any::<bool>(),
    ) {
        let model = Affine::new(seed, SHAPE, CLASSES);
        // Images touching both ends of [0, 1], where the box clip matters.
        let x = images(b, SHAPE, seed + 1);
        let x = ((x * 1.4).unwrap() - 0.2).unwrap().clamp(0f64, 1f64).unwrap();
        let y = labels(b, CLASSES, seed);
        let cfg = PgdConfig::builder(eps)
            .steps(steps)
            .step_size(step_size)
            .random_start(random_start)
            .seed(seed)
            .build()
            .unwrap();
        let adv = PgdLinf::new(cfg).unwrap().perturb(&model, &x, &y).unwrap();
        prop_assert!(!adv.is_variable());
        let (a, c) = (vec1(&adv), vec1(&x));
        for (a, c) in a.iter().zip(&c) {
            prop_assert!((0.0..=1.0).contains(a), "{a} outside [0, 1]");
            prop_assert!((a - c).abs() <= eps * (1.0 + 1e-12), "|δ| = {} > ε = {eps}", (a - c).abs());
        }
    }
}

/// To first order each single-step method raises every example's loss by ε times a norm of
/// its input gradient (docs/method.md §3): J1 `ε/√N‖∇ℓ‖₁`, J2 `ε‖∇ℓ‖₂`, J∞ `ε‖∇ℓ‖_∞`.
fn check_first_order(model: &dyn Classifier, x: &Tensor, y: &Tensor, n: usize) {
    let eps = 1e-5;
    let g = input_gradient(model, x, y, false).unwrap().gradient;
    let clean = losses(model, x, y);
    let cases: [(Box<dyn Perturbation>, Norm, f64); 3] = [
        (
            Box::new(Fgsm::new(eps).unwrap()),
            Norm::L1,
            eps / (n as f64).sqrt(),
        ),
        (Box::new(GradientAscent::new(eps).unwrap()), Norm::L2, eps),
        (Box::new(MaxEntry::new(eps).unwrap()), Norm::Linf, eps),
    ];
    for (p, norm, scale) in cases {
        let predicted: Vec<f64> = vec1(&row_norms(&g, norm).unwrap())
            .iter()
            .map(|v| scale * v)
            .collect();
        let adv = p.perturb(model, x, y).unwrap();
        let after = losses(model, &adv, y);
        for i in 0..clean.len() {
            let rise = after[i] - clean[i];
            assert!(
                rise > 0.0,
                "{}: loss of image {i} fell by {}",
                p.name(),
                -rise
            );
            assert!(
                (rise - predicted[i]).abs() < 1e-3 * predicted[i],
                "{} image {i}: rise {rise:e} vs first-order {:e}",
                p.name(),
                predicted[i]
            );
        }
    }
}

#[test]
fn single_steps_raise_the_loss_by_the_dual_norm_to_first_order_on_an_affine_model() {
    for seed in 0..5 {
        let model = Affine::new(seed, SHAPE, CLASSES);
        let (x, y) = (images(4, SHAPE, seed), labels(4, CLASSES, seed));
        check_first_order(&model, &x, &y, N);
    }
}

#[test]
fn single_steps_raise_the_loss_by_the_dual_norm_to_first_order_on_a_conv_net() {
    for seed in 0..3 {
        let model = TinyConv::new(seed, true, true);
        // Running statistics away from their initial values.
        for s in 0..3 {
            model
                .forward_t(&images(8, TINY_SHAPE, s + 10), true)
                .unwrap();
        }
        let (x, y) = (images(4, TINY_SHAPE, seed), labels(4, TINY_CLASSES, seed));
        check_first_order(&model, &x, &y, 16);
    }
}

#[test]
fn pgd_raises_the_loss() {
    for random_start in [false, true] {
        for seed in 0..3 {
            let model = Affine::new(seed, SHAPE, CLASSES);
            let (x, y) = (images(6, SHAPE, seed), labels(6, CLASSES, seed));
            let cfg = PgdConfig::builder(0.05)
                .steps(5)
                .step_size(0.02)
                .random_start(random_start)
                .seed(seed)
                .build()
                .unwrap();
            let adv = PgdLinf::new(cfg).unwrap().perturb(&model, &x, &y).unwrap();
            let (before, after) = (losses(&model, &x, &y), losses(&model, &adv, &y));
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            assert!(mean(&after) > mean(&before), "{after:?} vs {before:?}");
            // On an affine model the loss is convex in x and the ascent beats the clean
            // point image by image once it has taken its steps.
            assert!(after.iter().zip(&before).all(|(a, b)| a > b));
        }
    }
}

#[test]
fn one_large_pgd_step_from_the_clean_point_is_the_clipped_sign_step() {
    let model = Affine::new(3, SHAPE, CLASSES);
    let (x, y) = (images(3, SHAPE, 1), labels(3, CLASSES, 2));
    let eps = 0.1;
    let cfg = PgdConfig::builder(eps)
        .steps(1)
        .step_size(1.0)
        .random_start(false)
        .build()
        .unwrap();
    let adv = PgdLinf::new(cfg).unwrap().perturb(&model, &x, &y).unwrap();
    let g = input_gradient(&model, &x, &y, false).unwrap().gradient;
    let want = (&x + (g.sign().unwrap() * eps).unwrap())
        .unwrap()
        .clamp(0f64, 1f64)
        .unwrap();
    let diff = vec1(&(adv - want).unwrap());
    assert!(diff.iter().all(|d| d.abs() < 1e-15), "{diff:?}");
}

fn snapshot(model: &dyn Classifier) -> Vec<(String, Vec<f64>)> {
    model
        .params()
        .all()
        .iter()
        .map(|p| (p.name.clone(), vec1(p.var.as_tensor())))
        .collect()
}

#[test]
fn perturbations_run_the_model_in_evaluation_mode() {
    let model = TinyConv::new(1, true, true);
    for s in 0..3 {
        model
            .forward_t(&images(8, TINY_SHAPE, s + 20), true)
            .unwrap();
    }
    let (x, y) = (images(4, TINY_SHAPE, 2), labels(4, TINY_CLASSES, 1));
    let before = snapshot(&model);
    let kinds = [
        PerturbationKind::J1 { epsilon: 0.1 },
        PerturbationKind::J2 { epsilon: 0.1 },
        PerturbationKind::Jinf { epsilon: 0.1 },
        PerturbationKind::PgdInf(PgdConfig::default()),
    ];
    for kind in &kinds {
        kind.build().unwrap().perturb(&model, &x, &y).unwrap();
        assert_eq!(
            snapshot(&model),
            before,
            "{}: parameters or batch-norm statistics changed",
            kind.name()
        );
    }
    // And the step follows the evaluation-mode gradient, not the training-mode one.
    let eps = 0.1;
    let adv = GradientAscent::new(eps)
        .unwrap()
        .perturb(&model, &x, &y)
        .unwrap();
    let step = |train: bool| {
        let g = input_gradient(&model, &x, &y, train).unwrap().gradient;
        let n = row_norms(&g, Norm::L2)
            .unwrap()
            .reshape((4, 1, 1, 1))
            .unwrap();
        vec1(&(&x + (g.broadcast_div(&n).unwrap() * eps).unwrap()).unwrap())
    };
    let (eval, train) = (step(false), step(true));
    let got = vec1(&adv);
    let dist = |a: &[f64]| {
        a.iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    assert!(dist(&eval) < 1e-12);
    assert!(dist(&train) > 1e-6, "test cannot tell the modes apart");
}

#[test]
fn pgd_random_start_is_seeded_and_fresh_on_every_call() {
    let model = Affine::new(0, SHAPE, CLASSES);
    let (x, y) = (images(2, SHAPE, 0), labels(2, CLASSES, 0));
    let cfg = PgdConfig::builder(0.1)
        .steps(1)
        .step_size(1e-3)
        .seed(7)
        .build()
        .unwrap();
    let a = PgdLinf::new(cfg).unwrap();
    let first = vec1(&a.perturb(&model, &x, &y).unwrap());
    let second = vec1(&a.perturb(&model, &x, &y).unwrap());
    assert_ne!(first, second, "the same noise twice");
    let b = PgdLinf::new(cfg).unwrap();
    assert_eq!(vec1(&b.perturb(&model, &x, &y).unwrap()), first);
    let resumed = PgdLinf::new(cfg).unwrap().with_first_call(1);
    assert_eq!(vec1(&resumed.perturb(&model, &x, &y).unwrap()), second);
    let other = PgdLinf::new(PgdConfig { seed: 8, ..cfg }).unwrap();
    assert_ne!(vec1(&other.perturb(&model, &x, &y).unwrap()), first);
}

#[test]
fn pgd_configuration_parses_its_readable_form() {
    let d = PgdConfig::default();
    assert_eq!(
        (d.epsilon, d.steps, d.step_size, d.random_start, d.seed),
        (8.0 / 255.0, 10, 2.0 / 255.0, true, 0)
    );
    let full: PgdConfig = "eps=0.031,steps=7,step-size=0.0078,random-start=false,seed=3"
        .parse()
        .unwrap();
    assert_eq!(
        full,
        PgdConfig {
            epsilon: 0.031,
            steps: 7,
            step_size: 0.0078,
            random_start: false,
            seed: 3
        }
    );
    let subset: PgdConfig = " steps = 20 , eps=4/255".parse().unwrap();
    assert_eq!(
        subset,
        PgdConfig {
            epsilon: 4.0 / 255.0,
            steps: 20,
            ..d
        }
    );
    assert_eq!("".parse::<PgdConfig>().unwrap(), d);
    let spelled: PgdConfig = "epsilon=0.1,step_size=1/40,random_start=no"
        .parse()
        .unwrap();
    assert_eq!(
        (spelled.epsilon, spelled.step_size, spelled.random_start),
        (0.1, 0.025, false)
    );
    // Display reads back exactly.
    for cfg in [d, full, subset, spelled] {
        assert_eq!(cfg.to_string().parse::<PgdConfig>().unwrap(), cfg);
    }
}

#[test]
fn pgd_configuration_errors_name_the_bad_key_or_value() {
    let cases = [
        ("eps=0.1,stpes=3", "stpes"),
        ("steps=ten", "ten"),
        ("eps=8/0", "8/0"),
        ("eps=abc", "abc"),
        ("random-start=maybe", "maybe"),
        ("eps", "key=value"),
        ("eps=-0.1", "eps"),
        ("steps=0", "steps"),
        ("step-size=0", "step-size"),
        ("eps=0.1,eps=0.2", "twice"),
        ("seed=-1", "-1"),
    ];
    for (input, needle) in cases {
        match input.parse::<PgdConfig>() {
            Err(e @ AdversarialError::Parse { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "{input}: {msg}");
            }
            other => panic!("{input}: expected a parse error, got {other:?}"),
        }
    }
    assert!(matches!(
        PgdConfig::builder(f64::NAN).build(),
        Err(AdversarialError::InvalidConfig(_))
    ));
}

#[test]
fn perturbation_kinds_serialise_build_and_validate() {
    let kinds = [
        (
            PerturbationKind::J1 { epsilon: 0.5 },
            r#"{"kind":"j1","epsilon":0.5}"#,
        ),
        (
            PerturbationKind::J2 { epsilon: 0.01 },
            r#"{"kind":"j2","epsilon":0.01}"#,
        ),
        (
            PerturbationKind::Jinf { epsilon: 0.1 },
            r#"{"kind":"jinf","epsilon":0.1}"#,
        ),
        (
            PerturbationKind::PgdInf(PgdConfig {
                epsilon: 0.25,
                steps: 3,
                step_size: 0.125,
                random_start: true,
                seed: 1,
            }),
            r#"{"kind":"pgd-inf","epsilon":0.25,"steps":3,"step_size":0.125,"random_start":true,"seed":1}"#,
        ),
    ];
    for (kind, json) in kinds {
        assert_eq!(serde_json::to_string(&kind).unwrap(), json);
        assert_eq!(
            serde_json::from_str::<PerturbationKind>(json).unwrap(),
            kind
        );
        assert_eq!(kind.build().unwrap().name(), kind.name());
    }
    for bad in [
        PerturbationKind::J1 { epsilon: -1.0 },
        PerturbationKind::J2 { epsilon: f64::NAN },
        PerturbationKind::Jinf {
            epsilon: f64::INFINITY,
        },
        PerturbationKind::PgdInf(PgdConfig {
            steps: 0,
            ..PgdConfig::default()
        }),
    ] {
        assert!(matches!(
            bad.validate(),
            Err(AdversarialError::InvalidConfig(_))
        ));
        assert!(bad.build().is_err());
    }
}

#[test]
fn perturbations_work_on_a_zoo_model_in_f32() {
    use tulip_models::{Architecture, Model, ModelConfig};
    let cfg = ModelConfig::new(Architecture::ResNet22, 10, (1, 8, 8));
    let model = Model::init(&cfg, 1, candle_core::DType::F32, &DEV).unwrap();
    let x = images(2, (1, 8, 8), 3)
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let y = labels(2, 10, 0);
    for kind in [
        PerturbationKind::J2 { epsilon: 0.5 },
        PerturbationKind::PgdInf(PgdConfig {
            steps: 2,
            ..PgdConfig::default()
        }),
    ] {
        let adv = kind.build().unwrap().perturb(&model, &x, &y).unwrap();
        assert_eq!(adv.dtype(), candle_core::DType::F32);
        assert_eq!(adv.dims(), x.dims());
    }
}
