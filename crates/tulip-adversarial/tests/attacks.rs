//! Integration tests of the evaluation attacks: on affine classifiers, whose minimum
//! adversarial distances are known in closed form, every attack must find a really
//! misclassified image in `[0, 1]` no closer than the minimum, and the exact attacks must
//! come close to it; plus the statuses (already misclassified, failed), the configuration
//! errors, and a nonlinear conv net.

mod common;

use candle_core::{DType, Result as CResult, Tensor};
use candle_nn::ModuleT;
use common::{images, vec1, TinyConv, DEV, TINY_CLASSES, TINY_SHAPE};
use tulip_adversarial::{
    run_attack, run_attack_with_adversarials, AdversarialError, AttackConfig, AttackKind,
    AttackOutcome, AttackStatus, Norm, DEEPFOOL_BOUNDARY_MARGIN,
};
use tulip_models::testing::Affine;
use tulip_models::{Classifier, ParamBuilder, Params};

/// `f(x) = W x + b` with `W`, `b` known on the host, evaluated in `dtype`.
struct Lin {
    w: Vec<Vec<f64>>,
    b: Vec<f64>,
    shape: (usize, usize, usize),
    /// The same classifier as a [`Classifier`].
    model: Affine,
}

impl Lin {
    fn new(w: Vec<Vec<f64>>, b: Vec<f64>, shape: (usize, usize, usize), dtype: DType) -> Self {
        let model = Affine::from_weights(&w, &b, shape, dtype);
        Self { w, b, shape, model }
    }

    /// Weights uniform in `[-scale, scale]`, biases in `[-1, 1]`, from a seed.
    fn random(seed: u64, shape: (usize, usize, usize), classes: usize, scale: f64) -> Self {
        let n = shape.0 * shape.1 * shape.2;
        let u = vec1(&images(1, (1, classes, n + 1), seed));
        let w = (0..classes)
            .map(|k| {
                (0..n)
                    .map(|j| scale * (2.0 * u[k * (n + 1) + j] - 1.0))
                    .collect()
            })
            .collect();
        let b = (0..classes)
            .map(|k| 2.0 * u[k * (n + 1) + n] - 1.0)
            .collect();
        Self::new(w, b, shape, DType::F64)
    }

    fn with_dtype(&self, dtype: DType) -> Self {
        Self::new(self.w.clone(), self.b.clone(), self.shape, dtype)
    }

    fn logits(&self, x: &[f64]) -> Vec<f64> {
        self.w
            .iter()
            .zip(&self.b)
            .map(|(w, b)| w.iter().zip(x).map(|(a, v)| a * v).sum::<f64>() + b)
            .collect()
    }

    fn predict(&self, x: &[f64]) -> usize {
        argmax(&self.logits(x))
    }

    /// The minimum distance (without the box) from `x` to a point not classified `y`, and
    /// that point: over `k ≠ y`, `(f_y − f_k)/‖w_y − w_k‖_q` with `q` dual to `norm`.
    fn minimum(&self, x: &[f64], y: usize, norm: Norm) -> (f64, Vec<f64>) {
        let f = self.logits(x);
        let mut best = (f64::INFINITY, x.to_vec());
        for k in (0..f.len()).filter(|&k| k != y) {
            let w: Vec<f64> = (0..x.len()).map(|j| self.w[y][j] - self.w[k][j]).collect();
            let gap = f[y] - f[k];
            let (d, point) = match norm {
                Norm::L2 => {
                    let q2: f64 = w.iter().map(|v| v * v).sum();
                    let d = gap / q2.sqrt();
                    (d, (0..x.len()).map(|j| x[j] - gap / q2 * w[j]).collect())
                }
                Norm::Linf => {
                    let q1: f64 = w.iter().map(|v| v.abs()).sum();
                    let d = gap / q1;
                    let p = (0..x.len()).map(|j| x[j] - d * w[j].signum()).collect();
                    (d, p)
                }
                Norm::L1 => unreachable!("no attack is defined in L1"),
            };
            if d < best.0 {
                best = (d, point);
            }
        }
        best
    }
}

/// Logits that ignore the input: nothing can fool it.
struct Constant {
    params: Params,
}

impl ModuleT for Constant {
    fn forward_t(&self, x: &Tensor, _train: bool) -> CResult<Tensor> {
        let b = x.dim(0)?;
        Tensor::new(&[0.0f64, 1.0, -1.0], x.device())?
            .to_dtype(x.dtype())?
            .unsqueeze(0)?
            .repeat((b, 1))
    }
}

impl tulip_models::Linearised for Constant {
    fn forward_linearised(&self, x: &Tensor) -> CResult<Tensor> {
        self.forward_t(x, false)
    }
}

impl Classifier for Constant {
    fn classes(&self) -> usize {
        3
    }
    fn input_shape(&self) -> (usize, usize, usize) {
        TINY_SHAPE
    }
    fn params(&self) -> &Params {
        &self.params
    }
}

/// TinyConv on `gain·(x − ½)`: a conv net whose decisions change within the unit box.
struct Amplified {
    inner: TinyConv,
    gain: f64,
}

impl ModuleT for Amplified {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        self.inner
            .forward_t(&x.affine(self.gain, -self.gain / 2.0)?, train)
    }
}

impl tulip_models::Linearised for Amplified {
    fn forward_linearised(&self, x: &Tensor) -> CResult<Tensor> {
        self.inner
            .forward_linearised(&x.affine(self.gain, -self.gain / 2.0)?)
    }
}

impl Classifier for Amplified {
    fn classes(&self) -> usize {
        TINY_CLASSES
    }
    fn input_shape(&self) -> (usize, usize, usize) {
        TINY_SHAPE
    }
    fn params(&self) -> &Params {
        self.inner.params()
    }
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |a, i| if v[i] > v[a] { i } else { a })
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let b = t.dim(0).unwrap();
    let v = vec1(t);
    v.chunks(v.len() / b).map(<[f64]>::to_vec).collect()
}

/// Images `0.5 + spread·(u − 0.5)` and the model's predictions as labels.
fn batch(lin: &Lin, b: usize, seed: u64, spread: f64) -> (Tensor, Tensor) {
    let x = images(b, lin.shape, seed)
        .affine(spread, 0.5 - spread / 2.0)
        .unwrap();
    let y: Vec<u32> = rows(&x).iter().map(|r| lin.predict(r) as u32).collect();
    (x, Tensor::new(y, &DEV).unwrap())
}

fn in_box(p: &[f64]) -> bool {
    p.iter().all(|v| (0.0..=1.0).contains(v))
}

fn l2(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

fn linf(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, a| m.max(a.abs()))
}

/// Runs `cfg` and checks what must hold for every attack on an affine model: each found
/// adversarial is in `[0, 1]`, really misclassified, has the reported distances, and is no
/// closer than the minimum in either norm. Returns `(outcome, minimum in cfg's norm,
/// whether the closed-form minimiser lies in the box)` per image.
fn attack_affine(
    lin: &Lin,
    x: &Tensor,
    y: &Tensor,
    cfg: &AttackConfig,
) -> Vec<(AttackOutcome, f64, bool)> {
    let run = run_attack_with_adversarials(&lin.model, x, y, cfg).unwrap();
    let labels = y.to_vec1::<u32>().unwrap();
    let (xs, advs) = (rows(x), rows(&run.adversarials));
    assert_eq!(run.outcomes.len(), xs.len());
    let mut out = Vec::new();
    for (i, o) in run.outcomes.iter().enumerate() {
        let y = labels[i] as usize;
        let (m2, p2) = lin.minimum(&xs[i], y, Norm::L2);
        let (minf, pinf) = lin.minimum(&xs[i], y, Norm::Linf);
        let name = format!("{} {} image {i}", cfg.kind, cfg.norm);
        assert_eq!(o.label as usize, y);
        assert_eq!(o.clean_prediction as usize, lin.predict(&xs[i]), "{name}");
        if o.status == AttackStatus::Found {
            let delta: Vec<f64> = advs[i].iter().zip(&xs[i]).map(|(a, b)| a - b).collect();
            assert!(in_box(&advs[i]), "{name}: adversarial outside [0, 1]");
            let pred = lin.predict(&advs[i]);
            assert_ne!(pred, y, "{name}: adversarial is not misclassified");
            assert_eq!(pred as u32, o.adversarial_prediction, "{name}");
            assert!((l2(&delta) - o.l2).abs() <= 1e-9 * (1.0 + o.l2), "{name}");
            assert!(
                (linf(&delta) - o.linf).abs() <= 1e-9 * (1.0 + o.linf),
                "{name}"
            );
            assert!(
                o.l2 >= m2 * (1.0 - 1e-6),
                "{name}: L2 {} below the minimum {m2}",
                o.l2
            );
            assert!(
                o.linf >= minf * (1.0 - 1e-6),
                "{name}: L∞ {} below the minimum {minf}",
                o.linf
            );
        }
        let (m, point) = match cfg.norm {
            Norm::L2 => (m2, p2),
            Norm::Linf => (minf, pinf),
            Norm::L1 => unreachable!("no attack is defined in L1"),
        };
        out.push((*o, m, in_box(&point)));
    }
    out
}

/// Every (attack, norm) pair that exists, with small budgets; PGD with radius `pgd_l2` or
/// `pgd_linf`.
fn all_configs(pgd_l2: f64, pgd_linf: f64) -> Vec<AttackConfig> {
    let mut v = Vec::new();
    for kind in AttackKind::ALL {
        for &norm in kind.valid_norms() {
            let cfg = match kind {
                AttackKind::Pgd if norm == Norm::L2 => AttackConfig::pgd(norm, pgd_l2),
                AttackKind::Pgd => AttackConfig::pgd(norm, pgd_linf),
                AttackKind::Boundary => AttackConfig::new(kind, norm).with_steps(300),
                _ => AttackConfig::new(kind, norm),
            };
            v.push(cfg.with_seed(3));
        }
    }
    v
}

const SHAPE: (usize, usize, usize) = (1, 8, 8);

#[test]
fn deepfool_finds_the_closed_form_minimum_on_a_multiclass_affine_model() {
    for (seed, norm) in [(1, Norm::L2), (2, Norm::Linf), (3, Norm::L2)] {
        let lin = Lin::random(seed, SHAPE, 5, 1.0);
        let (x, y) = batch(&lin, 8, seed + 10, 0.4);
        let cfg = AttackConfig::new(AttackKind::DeepFool, norm);
        let mut checked = 0;
        for (o, m, box_free) in attack_affine(&lin, &x, &y, &cfg) {
            assert_eq!(o.status, AttackStatus::Found);
            if box_free {
                let d = o.distance(norm).expect("found");
                assert!(
                    d <= m * 1.03 * (1.0 + cfg.overshoot),
                    "{norm}: {d} vs minimum {m}"
                );
                checked += 1;
            }
        }
        assert!(
            checked >= 6,
            "only {checked} images with an unclipped minimiser"
        );
    }
}

#[test]
fn single_step_and_iterative_attacks_are_near_optimal_on_a_binary_affine_model() {
    // With two classes the cross-entropy gradient is a positive multiple of w_k − w_y, so
    // the FGSM and gradient directions are the optimal L∞ and L2 directions.
    let lin = Lin::random(7, SHAPE, 2, 1.0);
    let (x, y) = batch(&lin, 6, 17, 0.3);
    let cases = [
        (AttackKind::Fgsm, Norm::Linf, 1.0 + 1e-4),
        (AttackKind::Gradient, Norm::L2, 1.0 + 1e-4),
        (AttackKind::Iterative, Norm::Linf, 1.1),
        (AttackKind::Iterative, Norm::L2, 1.1),
        (AttackKind::DeepFool, Norm::L2, 1.02 * (1.0 + 1e-6)),
    ];
    // DeepFool aims its margin past the boundary: in one step, 1.02·(gap + margin)/‖w‖.
    let w: Vec<f64> = lin.w[0].iter().zip(&lin.w[1]).map(|(a, b)| a - b).collect();
    let margin = DEEPFOOL_BOUNDARY_MARGIN / l2(&w);
    for (kind, norm, factor) in cases {
        let cfg = AttackConfig::new(kind, norm);
        for (o, m, box_free) in attack_affine(&lin, &x, &y, &cfg) {
            assert!(box_free, "the test images must not make the box bind");
            assert_eq!(o.status, AttackStatus::Found, "{kind} {norm}");
            let d = o.distance(norm).expect("found");
            let m = if kind == AttackKind::DeepFool {
                m + margin
            } else {
                m
            };
            assert!(d <= m * factor, "{kind} {norm}: {d} vs minimum {m}");
        }
    }
}

#[test]
fn iterative_attacks_are_within_ten_percent_on_a_multiclass_affine_model() {
    // The cross-entropy gradient points at the nearest boundary only when the other
    // classes' probabilities are negligible there: large weights make the logits spread
    // widely, as in a trained classifier (with weights of order 1 the attack is ~12% off).
    for (seed, norm) in [(4, Norm::L2), (5, Norm::Linf), (6, Norm::Linf)] {
        let lin = Lin::random(seed, SHAPE, 4, 10.0);
        let (x, y) = batch(&lin, 6, seed + 20, 0.4);
        let cfg = AttackConfig::new(AttackKind::Iterative, norm);
        for (o, m, box_free) in attack_affine(&lin, &x, &y, &cfg) {
            assert_eq!(o.status, AttackStatus::Found);
            if box_free {
                let d = o.distance(norm).expect("found");
                assert!(d <= m * 1.1, "{norm}: {d} vs minimum {m}");
            }
        }
    }
}

#[test]
fn no_attack_reports_a_distance_below_the_true_minimum() {
    for seed in [11, 12] {
        // No biases and uniform images, so that neither the batch nor uniform noise (the
        // Boundary attack's starting points) is all of one class.
        let lin = Lin::random(seed, (1, 4, 4), 4, 1.0);
        let lin = Lin::new(lin.w, vec![0.0; 4], lin.shape, DType::F64);
        let (x, y) = batch(&lin, 6, seed, 1.0);
        for cfg in all_configs(2.0, 0.5) {
            let found = attack_affine(&lin, &x, &y, &cfg)
                .iter()
                .filter(|r| r.0.status == AttackStatus::Found)
                .count();
            assert!(found >= 3, "{} {}: only {found} found", cfg.kind, cfg.norm);
        }
    }
}

#[test]
fn attacks_work_in_f32() {
    let lin64 = Lin::random(21, (1, 4, 4), 3, 1.0);
    let lin = lin64.with_dtype(DType::F32);
    let (x, y) = batch(&lin64, 4, 5, 0.5);
    let x = x.to_dtype(DType::F32).unwrap();
    for cfg in all_configs(2.0, 0.5) {
        let run = run_attack_with_adversarials(&lin.model, &x, &y, &cfg).unwrap();
        assert_eq!(run.adversarials.dtype(), DType::F32);
        let preds = lin
            .model
            .forward_t(&run.adversarials, false)
            .unwrap()
            .argmax(1)
            .unwrap();
        let preds = preds.to_vec1::<u32>().unwrap();
        for (o, p) in run.outcomes.iter().zip(preds) {
            if o.status == AttackStatus::Found {
                assert_ne!(p, o.label, "{} {}", cfg.kind, cfg.norm);
                assert!(o.l2 > 0.0 && o.linf > 0.0);
            }
        }
        assert!(run.outcomes.iter().any(|o| o.status == AttackStatus::Found));
    }
}

#[test]
fn boundary_attack_approaches_the_minimum() {
    let lin = Lin::random(31, (1, 4, 4), 3, 1.0);
    let (x, y) = batch(&lin, 4, 8, 0.4);
    let cfg = AttackConfig::new(AttackKind::Boundary, Norm::L2)
        .with_steps(1500)
        .with_seed(1);
    let results = attack_affine(&lin, &x, &y, &cfg);
    for (o, m, _) in &results {
        assert_eq!(o.status, AttackStatus::Found);
        assert!(o.l2 <= 1.5 * m, "boundary: {} vs minimum {m}", o.l2);
        assert!(o.linf.is_finite() && o.linf > 0.0);
    }
    // Seeded: the same seed gives the same result, another seed (almost surely) not.
    let again = run_attack(&lin.model, &x, &y, &cfg).unwrap();
    assert_eq!(again, results.iter().map(|r| r.0).collect::<Vec<_>>());
    let other = run_attack(&lin.model, &x, &y, &cfg.with_seed(2)).unwrap();
    assert_ne!(other, again);
}

#[test]
fn already_misclassified_images_have_distance_zero() {
    let lin = Lin::random(41, (1, 4, 4), 3, 1.0);
    let (x, y) = batch(&lin, 4, 9, 0.5);
    // Images 0 and 2 get a wrong label.
    let mut labels = y.to_vec1::<u32>().unwrap();
    for i in [0, 2] {
        labels[i] = (labels[i] + 1) % 3;
    }
    let y = Tensor::new(labels, &DEV).unwrap();
    for cfg in all_configs(2.0, 0.5) {
        let run = run_attack_with_adversarials(&lin.model, &x, &y, &cfg).unwrap();
        let (xs, advs) = (rows(&x), rows(&run.adversarials));
        for i in [0, 2] {
            let o = run.outcomes[i];
            assert_eq!(o.status, AttackStatus::AlreadyMisclassified, "{}", cfg.kind);
            assert_eq!((o.l2, o.linf), (0.0, 0.0));
            assert_eq!(o.adversarial_prediction, o.clean_prediction);
            assert_ne!(o.clean_prediction, o.label);
            assert_eq!(advs[i], xs[i]);
        }
        assert!(run.outcomes[1].status != AttackStatus::AlreadyMisclassified);
    }
}

#[test]
fn an_unfoolable_model_gives_failures_not_zero_distances() {
    let model = Constant {
        params: ParamBuilder::new(0, DType::F64, &DEV).params(),
    };
    let x = images(3, TINY_SHAPE, 1);
    let y = Tensor::new(&[1u32, 1, 0], &DEV).unwrap();
    for cfg in all_configs(2.0, 0.5) {
        let run = run_attack_with_adversarials(&model, &x, &y, &cfg).unwrap();
        for o in &run.outcomes[..2] {
            assert_eq!(o.status, AttackStatus::Failed, "{} {}", cfg.kind, cfg.norm);
            assert!(o.l2.is_nan() && o.linf.is_nan());
            assert_eq!(o.adversarial_prediction, 1);
        }
        assert_eq!(run.outcomes[2].status, AttackStatus::AlreadyMisclassified);
        assert_eq!(vec1(&run.adversarials), vec1(&x));
    }
}

#[test]
fn pgd_succeeds_exactly_when_the_ball_reaches_the_boundary() {
    let lin = Lin::random(51, SHAPE, 2, 1.0);
    let (x, y) = batch(&lin, 5, 3, 0.3);
    for norm in [Norm::L2, Norm::Linf] {
        let minima: Vec<f64> = attack_affine(&lin, &x, &y, &AttackConfig::pgd(norm, 1e-3))
            .iter()
            .map(|(o, m, _)| {
                assert_eq!(o.status, AttackStatus::Failed, "{norm}: tiny ε must fail");
                *m
            })
            .collect();
        let (lo, hi) = minima
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), &m| (a.min(m), b.max(m)));
        for random_start in [false, true] {
            let mut cfg = AttackConfig::pgd(norm, 0.9 * lo);
            cfg.random_start = random_start;
            for (o, _, _) in attack_affine(&lin, &x, &y, &cfg) {
                assert_eq!(
                    o.status,
                    AttackStatus::Failed,
                    "{norm}: ε below every minimum"
                );
            }
            cfg.epsilon = Some(1.2 * hi);
            for (o, _, _) in attack_affine(&lin, &x, &y, &cfg) {
                assert_eq!(
                    o.status,
                    AttackStatus::Found,
                    "{norm}: ε above every minimum"
                );
                assert!(o.distance(norm).expect("found") <= 1.2 * hi * (1.0 + 1e-9));
            }
        }
    }
}

/// An image whose DeepFool steps the box clips by half, on an f32 model: half the
/// pixels sit at 0 and the direction would push them below. Each step then removes only
/// about half of the logit gap, which shrinks geometrically; aimed exactly at the boundary,
/// the gap reaches 0 within f32's rounding (a tie, which keeps the label) and the attack
/// failed, though the image is easily fooled. With the margin it is found.
#[test]
fn deepfool_fools_an_image_whose_steps_the_box_clips() {
    let n = 64;
    // Class 0 (the label): +1 on the first half of the pixels, −1 on the second; class 1: 0.
    let v: Vec<f64> = (0..n).map(|j| if j < n / 2 { 1.0 } else { -1.0 }).collect();
    let lin = Lin::new(vec![v, vec![0.0; n]], vec![16.5, 0.0], SHAPE, DType::F32);
    let pixels: Vec<f32> = (0..n).map(|j| if j < n / 2 { 0.0 } else { 0.5 }).collect();
    let x = Tensor::from_vec(pixels, (1, 1, 8, 8), &DEV).unwrap();
    let y = Tensor::new(&[0u32], &DEV).unwrap();
    assert_eq!(lin.predict(&rows(&x)[0]), 0, "gap 0.5 for class 0");
    for norm in [Norm::L2, Norm::Linf] {
        let cfg = AttackConfig::new(AttackKind::DeepFool, norm);
        let run = run_attack_with_adversarials(&lin.model, &x, &y, &cfg).unwrap();
        let outcome = &run.outcomes[0];
        assert_eq!(outcome.status, AttackStatus::Found, "{norm}: {outcome:?}");
        let adversarial = &rows(&run.adversarials)[0];
        assert!(in_box(adversarial), "{norm}: adversarial outside [0, 1]");
        assert_eq!(lin.predict(adversarial), 1, "{norm}: not misclassified");
    }
}

#[test]
fn batching_does_not_change_deepfool() {
    let lin = Lin::random(61, (1, 4, 4), 4, 1.0);
    let (x, y) = batch(&lin, 4, 2, 0.5);
    let cfg = AttackConfig::new(AttackKind::DeepFool, Norm::Linf);
    let together = run_attack(&lin.model, &x, &y, &cfg).unwrap();
    for (i, t) in together.iter().enumerate() {
        let xi = x.narrow(0, i, 1).unwrap();
        let yi = y.narrow(0, i, 1).unwrap();
        let alone = run_attack(&lin.model, &xi, &yi, &cfg).unwrap()[0];
        assert_eq!(alone.status, t.status);
        assert!((alone.linf - t.linf).abs() < 1e-12 && (alone.l2 - t.l2).abs() < 1e-12);
    }
}

/// A small conv net, 8 images and its own predictions as their labels. As initialised,
/// TinyConv's logits hardly depend on the input; amplifying the input makes its
/// nonlinearity (ReLU kinks, pooling) matter within the unit box.
fn conv_net_and_images() -> (Amplified, Tensor, Tensor) {
    let model = Amplified {
        inner: TinyConv::new(4, true, false),
        gain: 50.0,
    };
    let x = images(8, TINY_SHAPE, 4);
    let y = model.forward_t(&x, false).unwrap().argmax(1).unwrap();
    (model, x, y)
}

#[test]
fn batching_does_not_change_the_iterative_attacks() {
    // In a batch, the images a step has fooled drop out of the next steps' passes: each
    // image's iterates must be those it has when attacked alone.
    let (model, x, y) = conv_net_and_images();
    let configs = [
        AttackConfig::pgd(Norm::L2, 1.0),
        AttackConfig::pgd(Norm::Linf, 0.1),
        AttackConfig::new(AttackKind::Iterative, Norm::L2),
        AttackConfig::new(AttackKind::Iterative, Norm::Linf),
    ];
    for cfg in configs {
        // Alone, each image would draw the random start of image 0.
        let cfg = AttackConfig {
            random_start: false,
            ..cfg
        };
        let together = run_attack(&model, &x, &y, &cfg).unwrap();
        let found = together
            .iter()
            .filter(|o| o.status == AttackStatus::Found)
            .count();
        assert!(found > 0, "{} {}: nothing found", cfg.kind, cfg.norm);
        for (i, t) in together.iter().enumerate() {
            let (xi, yi) = (x.narrow(0, i, 1).unwrap(), y.narrow(0, i, 1).unwrap());
            let alone = run_attack(&model, &xi, &yi, &cfg).unwrap()[0];
            let case = format!("{} {} image {i}", cfg.kind, cfg.norm);
            assert_eq!(alone.status, t.status, "{case}");
            if t.status == AttackStatus::Found {
                assert!((alone.l2 - t.l2).abs() < 1e-9, "{case}: {alone:?} {t:?}");
                assert!((alone.linf - t.linf).abs() < 1e-9, "{case}");
            }
        }
    }
}

#[test]
fn attacks_on_a_conv_net_return_misclassified_images_in_the_unit_box() {
    let (model, x, y) = conv_net_and_images();
    let mut found = 0;
    for cfg in all_configs(1.0, 0.3) {
        let run = run_attack_with_adversarials(&model, &x, &y, &cfg).unwrap();
        let preds = model
            .forward_t(&run.adversarials, false)
            .unwrap()
            .argmax(1)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        let clean = rows(&x);
        for (i, (o, adv)) in run.outcomes.iter().zip(rows(&run.adversarials)).enumerate() {
            assert!(in_box(&adv));
            match o.status {
                AttackStatus::Found => {
                    found += 1;
                    assert_ne!(preds[i], o.label, "{} {}", cfg.kind, cfg.norm);
                    assert_eq!(preds[i], o.adversarial_prediction);
                    let delta: Vec<f64> = adv.iter().zip(&clean[i]).map(|(a, b)| a - b).collect();
                    assert!((l2(&delta) - o.l2).abs() < 1e-9);
                    assert!((linf(&delta) - o.linf).abs() < 1e-9);
                    if cfg.kind == AttackKind::Pgd {
                        let eps = cfg.epsilon.unwrap();
                        assert!(o.distance(cfg.norm).expect("found") <= eps * (1.0 + 1e-9));
                    }
                }
                AttackStatus::AlreadyMisclassified => assert_ne!(o.clean_prediction, o.label),
                AttackStatus::Failed => assert!(o.l2.is_nan()),
            }
        }
    }
    assert!(
        found > 10,
        "only {found} adversarials found on the conv net"
    );
}

#[test]
fn invalid_combinations_are_clear_errors() {
    for (kind, norm, valid) in [
        (AttackKind::Fgsm, Norm::L2, "linf"),
        (AttackKind::Gradient, Norm::Linf, "l2"),
        (AttackKind::Boundary, Norm::Linf, "l2"),
    ] {
        let err = AttackConfig::new(kind, norm)
            .validate()
            .unwrap_err()
            .to_string();
        for word in [kind.name(), norm.name(), valid] {
            assert!(err.contains(word), "{err:?} does not name {word}");
        }
        // run_attack refuses too.
        let lin = Lin::random(1, (1, 4, 4), 3, 1.0);
        let (x, y) = batch(&lin, 1, 1, 0.5);
        assert!(matches!(
            run_attack(&lin.model, &x, &y, &AttackConfig::new(kind, norm)),
            Err(AdversarialError::InvalidConfig(_))
        ));
    }
    let err = AttackConfig::new(AttackKind::Pgd, Norm::L2)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("epsilon"), "{err}");
    let err = AttackConfig::new(AttackKind::DeepFool, Norm::L2)
        .with_epsilon(0.1)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("deepfool"), "{err}");
    assert!(AttackConfig::pgd(Norm::Linf, -1.0).validate().is_err());
    assert!(AttackConfig::new(AttackKind::DeepFool, Norm::L2)
        .with_steps(0)
        .validate()
        .is_err());
    for kind in AttackKind::ALL {
        for &norm in kind.valid_norms() {
            let mut cfg = AttackConfig::new(kind, norm);
            cfg.epsilon = (kind == AttackKind::Pgd).then_some(0.1);
            cfg.validate().unwrap();
        }
    }
}

#[test]
fn clean_logits_that_overflow_are_an_error_naming_the_image() {
    // Finite weights (f32's largest is about 3.4e38) whose logits overflow to ±∞ for any
    // image with enough non-zero pixels, but not for the black image 0.
    let shape = (1, 4, 4);
    let n = 16;
    let w = vec![vec![1e38; n], vec![-1e38; n], vec![0.0; n]];
    let model = Affine::from_weights(&w, &[0.0, 0.0, 1.0], shape, DType::F32);
    let mut pixels = vec![0f32; 3 * n];
    pixels[n..].fill(0.5);
    let x = Tensor::from_vec(pixels, (3, 1, 4, 4), &DEV).unwrap();
    let y = Tensor::new(&[2u32, 2, 2], &DEV).unwrap();
    for cfg in all_configs(1.0, 0.1) {
        match run_attack(&model, &x, &y, &cfg) {
            Err(AdversarialError::NonFiniteCleanLogits { image }) => {
                assert_eq!(image, 1, "{} {}", cfg.kind, cfg.norm)
            }
            other => panic!("{} {}: {other:?}", cfg.kind, cfg.norm),
        }
    }
    let err = run_attack(&model, &x, &y, &all_configs(1.0, 0.1)[0]).unwrap_err();
    assert!(err.to_string().contains("image 1"), "{err}");
    assert!(err.to_string().contains("not finite"), "{err}");
    // The finite image alone is attacked as usual.
    let outcomes = run_attack(
        &model,
        &x.narrow(0, 0, 1).unwrap(),
        &y.narrow(0, 0, 1).unwrap(),
        &AttackConfig::new(AttackKind::DeepFool, Norm::L2),
    )
    .unwrap();
    assert_eq!(outcomes.len(), 1);
}

#[test]
fn names_parse_and_round_trip() {
    for kind in AttackKind::ALL {
        assert_eq!(kind.name().parse::<AttackKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), kind.name());
    }
    assert_eq!(
        "DeepFool".parse::<AttackKind>().unwrap(),
        AttackKind::DeepFool
    );
    assert_eq!("bim".parse::<AttackKind>().unwrap(), AttackKind::Iterative);
    assert_eq!("l2".parse::<Norm>().unwrap(), Norm::L2);
    assert_eq!("linf".parse::<Norm>().unwrap(), Norm::Linf);
    assert_eq!("inf".parse::<Norm>().unwrap(), Norm::Linf);
    let err = "cw".parse::<AttackKind>().unwrap_err().to_string();
    assert!(err.contains("deepfool") && err.contains("cw"), "{err}");
    // One norm type for penalties and attacks: L1 parses, and no attack is defined in it.
    assert_eq!("l1".parse::<Norm>().unwrap(), Norm::L1);
    assert!("l3".parse::<Norm>().is_err());
    let err = AttackConfig::new(AttackKind::DeepFool, Norm::L1)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("l1") && err.contains("l2, linf"), "{err}");
    let cfg = AttackConfig::pgd(Norm::Linf, 8.0 / 255.0);
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(
        json.contains("\"pgd\"") && json.contains("\"linf\""),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<AttackConfig>(&json).unwrap(), cfg);
}

#[test]
fn boundary_attack_starts_from_another_class_when_noise_is_never_misclassified() {
    // Class 1 only where pixel 0 exceeds 0.999: uniform noise is (almost) never class 1,
    // so image 1 (class 0) starts from image 0 (class 1).
    let w = vec![vec![0.0; 4], vec![10.0, 0.0, 0.0, 0.0]];
    let lin = Lin::new(w, vec![0.0, -9.99], (1, 2, 2), DType::F64);
    let x = Tensor::new(
        &[[[[1.0f64, 0.5], [0.5, 0.5]]], [[[0.5, 0.2], [0.7, 0.1]]]],
        &DEV,
    )
    .unwrap();
    let y = Tensor::new(&[1u32, 0], &DEV).unwrap();
    let cfg = AttackConfig::new(AttackKind::Boundary, Norm::L2).with_steps(500);
    let results = attack_affine(&lin, &x, &y, &cfg);
    for (o, m, _) in &results {
        assert_eq!(o.status, AttackStatus::Found);
        assert!(o.l2 <= 1.5 * m, "{} vs minimum {m}", o.l2);
    }
}
