//! Evaluation attacks (docs/method.md §5): minimum-distance attacks under the misclassification
//! criterion, with inputs bounded to `[0, 1]`, as Foolbox 1.x ran them for the reference.
//!
//! | [`AttackKind`]  | norms        | what it reports                                           |
//! |-----------------|--------------|-----------------------------------------------------------|
//! | `deepfool`      | `l2`, `linf` | DeepFool (all classes linearised, overshoot per step)     |
//! | `iterative`     | `l2`, `linf` | basic iterative method / I-FGSM, searched over ε          |
//! | `fgsm`          | `linf`       | fast gradient sign method, searched over ε                |
//! | `gradient`      | `l2`         | single normalised-gradient step, searched over ε          |
//! | `boundary`      | `l2`         | decision-based Boundary attack (Brendel et al.)           |
//! | `pgd`           | `l2`, `linf` | PGD at a **fixed** ε (for robust accuracy), not a search  |
//!
//! Every attack takes a batch `[B, C, H, W]` (f32 or f64, on any device), runs the model in
//! evaluation mode (`forward_t(x, false)`, so the images are independent), clips every
//! iterate to `[0, 1]`, and treats the images independently: a batch gives the same
//! per-image results as the images one by one (up to floating-point reassociation in the
//! model), except for the random streams of Boundary and PGD, which are indexed by the
//! position in the batch (see [`AttackConfig::seed`]).
//!
//! ## Design record
//! - **Best adversarial so far.** As Foolbox's `Adversarial` object did, every point the
//!   attack evaluates the model on is a candidate: if it is misclassified and closer (in
//!   the attack's norm) than the best so far, it becomes the best. The reported distance is
//!   that of the best point, so an attack reports the smallest perturbation it *saw*, not
//!   only the one its last step produced.
//! - **Verified.** The best points are classified once more at the end, in one batch; an
//!   image whose point is not misclassified there is a failure. A reported distance is
//!   therefore always that of a really misclassified image in `[0, 1]`, and hence never
//!   below the true minimum distance.
//! - **Failure is not 0.** An image the attack cannot fool is [`AttackStatus::Failed`] with
//!   distances `NaN`; an image misclassified before any perturbation is
//!   [`AttackStatus::AlreadyMisclassified`] with distances 0 (and is not attacked).
//! - The loss of the gradient attacks (iterative, FGSM, gradient, PGD) is the per-example
//!   cross-entropy of the true label, as in Foolbox; DeepFool uses the logits.
//! - Search attacks grow ε geometrically from a start value until the attack succeeds (or
//!   ε reaches the largest distance in the unit box: 1 for L∞, `√N` for L2), then bisect
//!   between the last failing and the first succeeding ε ([`AttackConfig::search_steps`]
//!   times), per image.
//! - Randomness (Boundary noise, PGD random start) is drawn on the host from ChaCha8
//!   streams, as elsewhere in this crate, so results do not depend on the device.

mod boundary;
mod deepfool;
pub use deepfool::BOUNDARY_MARGIN as DEEPFOOL_BOUNDARY_MARGIN;
mod iterative;
mod search;
mod single_step;

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor, D};
use candle_nn::ModuleT;
use serde::{Deserialize, Serialize};
use tulip_penalties::{row_norms, Norm};

use crate::budget::check_positive;
pub(crate) use crate::step::row_scalars;
use crate::{AdversarialError, Result};

/// Which evaluation attack to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// DeepFool (Moosavi-Dezfooli et al.), L2 or L∞.
    DeepFool,
    /// Basic iterative method (Kurakin et al.; I-FGSM for L∞), minimum ε by search.
    Iterative,
    /// Fast gradient sign method (L∞), minimum ε by search.
    Fgsm,
    /// Single normalised-gradient step (L2), minimum ε by search.
    Gradient,
    /// Decision-based Boundary attack (Brendel et al.), L2.
    Boundary,
    /// Projected gradient descent at a fixed ε (robust accuracy), L2 or L∞.
    Pgd,
}

impl AttackKind {
    /// Every attack, in the order of the table above.
    pub const ALL: [AttackKind; 6] = [
        AttackKind::DeepFool,
        AttackKind::Iterative,
        AttackKind::Fgsm,
        AttackKind::Gradient,
        AttackKind::Boundary,
        AttackKind::Pgd,
    ];

    /// The command-line name: `deepfool`, `iterative`, `fgsm`, `gradient`, `boundary`, `pgd`.
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::DeepFool => "deepfool",
            AttackKind::Iterative => "iterative",
            AttackKind::Fgsm => "fgsm",
            AttackKind::Gradient => "gradient",
            AttackKind::Boundary => "boundary",
            AttackKind::Pgd => "pgd",
        }
    }

    /// The norms this attack is defined for.
    pub fn valid_norms(self) -> &'static [Norm] {
        match self {
            AttackKind::DeepFool | AttackKind::Iterative | AttackKind::Pgd => {
                &[Norm::L2, Norm::Linf]
            }
            AttackKind::Fgsm => &[Norm::Linf],
            AttackKind::Gradient | AttackKind::Boundary => &[Norm::L2],
        }
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttackKind {
    type Err = AdversarialError;

    /// Accepts the names of [`AttackKind::name`] (case-insensitive), and `bim`/`ifgsm` for
    /// `iterative`.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let found = match lower.as_str() {
            "bim" | "ifgsm" | "i-fgsm" => Some(AttackKind::Iterative),
            other => AttackKind::ALL.into_iter().find(|k| k.name() == other),
        };
        found.ok_or_else(|| AdversarialError::Parse {
            input: s.to_string(),
            reason:
                "unknown attack (expected deepfool, iterative, fgsm, gradient, boundary or pgd)"
                    .into(),
        })
    }
}

/// The largest distance two images in `[0, 1]^n` can have in `norm`.
fn box_diameter(norm: Norm, n: usize) -> f64 {
    match norm {
        Norm::L1 => n as f64,
        Norm::L2 => (n as f64).sqrt(),
        Norm::Linf => 1.0,
    }
}

/// The error for a norm no attack is defined in: [`AttackConfig::validate`] admits only L2
/// and L∞, so the attacks' own code meets it only when called without validation.
fn norm_not_attacked(norm: Norm) -> AdversarialError {
    AdversarialError::InvalidConfig(format!("no attack is defined in the {norm} norm"))
}

/// What to run: the attack, its norm and its budget. [`AttackConfig::new`] fills in the
/// defaults of the reference (Foolbox 1.x) for the attack; the fields are public so callers
/// can override them, and [`run_attack`] validates them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttackConfig {
    /// The attack.
    pub kind: AttackKind,
    /// The norm it minimises (bounds, for PGD).
    pub norm: Norm,
    /// The iteration budget: DeepFool's maximum number of linearisation steps (default
    /// 50), the gradient steps of each iterative run (10) or of PGD (20), the Boundary
    /// attack's iterations (5000). Unused by the single-step FGSM and gradient attacks.
    pub steps: usize,
    /// PGD: the fixed radius ε (required). Iterative, FGSM, gradient: the first ε the
    /// search tries (default 0.3 for the iterative method and `1/1000` of the box
    /// diameter for the single-step ones, in the attack's norm, where the box diameter is
    /// 1 for L∞ and `√N` for L2; the iterative L2 default is `0.3·√N`). DeepFool and
    /// Boundary take none.
    pub epsilon: Option<f64>,
    /// Step size as a fraction of ε, for the iterative method (default `0.05/0.3`, the
    /// Foolbox ratio) and PGD (default `2.5/steps`). Others take none.
    pub step_size: Option<f64>,
    /// Bisection steps of the ε search of the iterative, FGSM and gradient attacks
    /// (default 20); also of the Boundary attack's blended start.
    pub search_steps: usize,
    /// DeepFool's overshoot: each step is `(1 + overshoot)` times the linearised distance
    /// to the nearest boundary (default 0.02).
    pub overshoot: f64,
    /// PGD: start from a uniform random point of the ε-ball (clipped to `[0, 1]`); default
    /// true.
    pub random_start: bool,
    /// Seed of the random streams (Boundary noise, PGD start). Image `i` of a batch uses
    /// ChaCha8 stream `i` of this seed, so callers that attack a data set in batches
    /// should derive the seed from the batch (e.g. `seed + batch index`).
    pub seed: u64,
}

impl AttackConfig {
    /// The reference defaults for `kind` in `norm` (not validated: e.g. PGD still needs
    /// an ε, see [`AttackConfig::pgd`]).
    pub fn new(kind: AttackKind, norm: Norm) -> Self {
        let steps = match kind {
            AttackKind::DeepFool => 50,
            AttackKind::Iterative => 10,
            AttackKind::Fgsm | AttackKind::Gradient => 1,
            AttackKind::Boundary => 5000,
            AttackKind::Pgd => 20,
        };
        Self {
            kind,
            norm,
            steps,
            epsilon: None,
            step_size: None,
            search_steps: 20,
            overshoot: 0.02,
            random_start: true,
            seed: 0,
        }
    }

    /// PGD at the fixed radius `epsilon` in `norm`, with the defaults otherwise.
    pub fn pgd(norm: Norm, epsilon: f64) -> Self {
        Self {
            epsilon: Some(epsilon),
            ..Self::new(AttackKind::Pgd, norm)
        }
    }

    /// The same configuration with `steps` iterations.
    pub fn with_steps(self, steps: usize) -> Self {
        Self { steps, ..self }
    }

    /// The same configuration with `epsilon`.
    pub fn with_epsilon(self, epsilon: f64) -> Self {
        Self {
            epsilon: Some(epsilon),
            ..self
        }
    }

    /// The same configuration with `search_steps` bisection steps.
    pub fn with_search_steps(self, search_steps: usize) -> Self {
        Self {
            search_steps,
            ..self
        }
    }

    /// The same configuration with `seed`.
    pub fn with_seed(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    /// Checks that the attack exists in this norm and that the values make sense for it.
    ///
    /// # Errors
    /// [`AdversarialError::InvalidConfig`] naming the attack and, for a norm it does not
    /// have, the norms it does have; or the offending field.
    pub fn validate(&self) -> Result<()> {
        let kind = self.kind;
        let bad = |m: String| {
            Err(AdversarialError::InvalidConfig(format!(
                "attack {kind}: {m}"
            )))
        };
        let valid = kind.valid_norms();
        if !valid.contains(&self.norm) {
            let names: Vec<&str> = valid.iter().map(|n| n.name()).collect();
            return bad(format!(
                "norm {} is not supported (valid norms for {kind}: {})",
                self.norm,
                names.join(", ")
            ));
        }
        let uses_steps = !matches!(kind, AttackKind::Fgsm | AttackKind::Gradient);
        if uses_steps && self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        match (kind, self.epsilon) {
            (AttackKind::Pgd, None) => return bad("epsilon (the fixed radius) is required".into()),
            (AttackKind::DeepFool | AttackKind::Boundary, Some(_)) => {
                return bad("takes no epsilon (it is a minimum-distance attack)".into())
            }
            (_, Some(e)) => check_positive(&format!("attack {kind}"), "epsilon", e)?,
            _ => {}
        }
        match (kind, self.step_size) {
            (AttackKind::Iterative | AttackKind::Pgd, Some(s)) => check_positive(
                &format!("attack {kind}"),
                "step size (a fraction of epsilon)",
                s,
            )?,
            (_, None) => {}
            (_, Some(_)) => return bad("takes no step size".into()),
        }
        if !(self.overshoot.is_finite() && self.overshoot >= 0.0) {
            return bad(format!(
                "overshoot must be finite and non-negative, got {}",
                self.overshoot
            ));
        }
        Ok(())
    }
}

/// How an image fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackStatus {
    /// Misclassified before any perturbation: distance 0, not attacked.
    AlreadyMisclassified,
    /// A misclassified image in `[0, 1]` was found; the distances are its.
    Found,
    /// The attack found no misclassified image: distances `NaN`, to be counted, not
    /// averaged.
    Failed,
}

impl AttackStatus {
    /// The name written to reports: `already-misclassified`, `found`, `failed`.
    pub fn name(self) -> &'static str {
        match self {
            AttackStatus::AlreadyMisclassified => "already-misclassified",
            AttackStatus::Found => "found",
            AttackStatus::Failed => "failed",
        }
    }
}

/// The result of attacking one image: what [`run_attack`] returns per image, what the
/// per-image CSV of `tulip attack` holds, and what every report and plot is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttackOutcome {
    /// Position of the image in what was attacked (the batch for [`run_attack`]; the
    /// split when a whole split is attacked in batches).
    pub index: usize,
    /// The true label.
    pub label: u32,
    /// The model's prediction on the clean image.
    pub clean_prediction: u32,
    /// The model's prediction on the adversarial image (the clean one when it failed).
    pub adversarial_prediction: u32,
    /// L2 norm of the perturbation (0 if already misclassified, `NaN` on failure).
    pub l2: f64,
    /// L∞ norm of the perturbation (0 if already misclassified, `NaN` on failure).
    pub linf: f64,
    /// How the image fared.
    pub status: AttackStatus,
}

impl AttackOutcome {
    /// An image the model misclassifies (as `prediction`) before any attack.
    pub fn already_misclassified(index: usize, label: u32, prediction: u32) -> Self {
        Self {
            index,
            label,
            clean_prediction: prediction,
            adversarial_prediction: prediction,
            l2: 0.0,
            linf: 0.0,
            status: AttackStatus::AlreadyMisclassified,
        }
    }

    /// An image classified correctly, then as `adversarial_prediction` at distances `l2`
    /// and `linf`.
    pub fn found(
        index: usize,
        label: u32,
        adversarial_prediction: u32,
        l2: f64,
        linf: f64,
    ) -> Self {
        Self {
            index,
            label,
            clean_prediction: label,
            adversarial_prediction,
            l2,
            linf,
            status: AttackStatus::Found,
        }
    }

    /// An image the attack could not fool (`prediction` is the clean prediction).
    pub fn failed(index: usize, label: u32, prediction: u32) -> Self {
        Self {
            index,
            label,
            clean_prediction: prediction,
            adversarial_prediction: prediction,
            l2: f64::NAN,
            linf: f64::NAN,
            status: AttackStatus::Failed,
        }
    }

    /// The distance in `norm`; `None` for a failure (and for L1, which is not recorded).
    pub fn distance(&self, norm: Norm) -> Option<f64> {
        match (self.status, norm) {
            (AttackStatus::Failed, _) | (_, Norm::L1) => None,
            (_, Norm::L2) => Some(self.l2),
            (_, Norm::Linf) => Some(self.linf),
        }
    }

    /// Whether the image ends up misclassified (already, or by the attack).
    pub fn is_misclassified(&self) -> bool {
        self.status != AttackStatus::Failed
    }
}

/// The outcomes of an attack on a batch and the adversarial images.
#[derive(Debug, Clone)]
pub struct AttackRun {
    /// One outcome per image, in batch order.
    pub outcomes: Vec<AttackOutcome>,
    /// The adversarial images `[B, C, H, W]` (detached, in `[0, 1]`); for an image the
    /// attack failed on or did not attack, the clean image.
    pub adversarials: Tensor,
}

/// Attacks every image of `images` (`[B, C, H, W]`, in `[0, 1]`) with true `labels` (`[B]`,
/// integer) and returns one outcome per image. `model` is any Candle model.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use tulip_adversarial::{run_attack, AttackConfig, AttackKind, AttackStatus, Norm};
///
/// // Logits (x̄ − ½, ½ − x̄) of the mean pixel x̄: class 0 above ½, class 1 below.
/// let model = candle_nn::func_t(|x, _| {
///     let m = x.flatten_from(1)?.mean_keepdim(1)?;
///     Tensor::cat(&[(&m - 0.5)?, (0.5 - &m)?], 1)
/// });
/// let x = Tensor::full(0.7f64, (1, 1, 2, 2), &Device::Cpu)?;
/// let labels = Tensor::new(&[0u32], &Device::Cpu)?;
/// let cfg = AttackConfig::new(AttackKind::DeepFool, Norm::L2);
/// let outcome = &run_attack(&model, &x, &labels, &cfg)?[0];
/// assert_eq!(outcome.status, AttackStatus::Found);
/// // The boundary x̄ = ½ is 0.2 per pixel away: 0.2·√4 = 0.4 in the 2-norm.
/// assert!((outcome.l2 - 0.4).abs() < 0.01, "{}", outcome.l2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`AdversarialError::InvalidConfig`] for an invalid configuration (see
/// [`AttackConfig::validate`]) or mismatched batch sizes;
/// [`AdversarialError::NonFiniteCleanLogits`] naming the first image whose clean logits
/// are not finite; Candle errors from the model.
pub fn run_attack(
    model: &dyn ModuleT,
    images: &Tensor,
    labels: &Tensor,
    cfg: &AttackConfig,
) -> Result<Vec<AttackOutcome>> {
    Ok(run_attack_with_adversarials(model, images, labels, cfg)?.outcomes)
}

/// As [`run_attack`], also returning the adversarial images.
///
/// # Errors
/// As [`run_attack`].
pub fn run_attack_with_adversarials(
    model: &dyn ModuleT,
    images: &Tensor,
    labels: &Tensor,
    cfg: &AttackConfig,
) -> Result<AttackRun> {
    cfg.validate()?;
    let x0 = images.detach();
    let b = x0.dim(0)?;
    let labels = labels.to_dtype(DType::U32)?.to_device(x0.device())?;
    let label_vec = labels.to_vec1::<u32>()?;
    if label_vec.len() != b {
        return Err(AdversarialError::InvalidConfig(format!(
            "attack {}: {b} images but {} labels",
            cfg.kind,
            label_vec.len()
        )));
    }
    if b == 0 {
        return Ok(AttackRun {
            outcomes: Vec::new(),
            adversarials: x0,
        });
    }
    let clean_logits = logits(model, &x0)?;
    // The arg-max of logits with a NaN or an infinity picks some class all the same, and
    // every distance would be measured from that meaningless prediction.
    if let Some(image) = first_non_finite_row(&clean_logits)? {
        return Err(AdversarialError::NonFiniteCleanLogits { image });
    }
    let clean_pred = predictions(&clean_logits)?;
    let mut tracker = Tracker::new(&x0, label_vec.clone(), cfg.norm, &clean_logits)?;
    let ctx = Ctx {
        model,
        x0: &x0,
        labels: &labels,
        cfg,
    };
    match cfg.kind {
        AttackKind::DeepFool => deepfool::run(&ctx, &mut tracker)?,
        AttackKind::Iterative => iterative::run_search(&ctx, &mut tracker)?,
        AttackKind::Fgsm | AttackKind::Gradient => single_step::run(&ctx, &mut tracker)?,
        AttackKind::Boundary => boundary::run(&ctx, &mut tracker)?,
        AttackKind::Pgd => iterative::run_pgd(&ctx, &mut tracker)?,
    }
    tracker.finish(model, &clean_pred)
}

/// What every attack needs: the model, the clean batch, the labels (`u32`, on the images'
/// device) and the configuration.
pub(crate) struct Ctx<'a> {
    model: &'a dyn ModuleT,
    x0: &'a Tensor,
    labels: &'a Tensor,
    cfg: &'a AttackConfig,
}

impl Ctx<'_> {
    fn batch(&self) -> usize {
        self.x0.dims()[0]
    }

    /// Pixels per image.
    fn pixels(&self) -> usize {
        self.x0.elem_count() / self.batch()
    }
}

/// The best (closest in the attack's norm) misclassified point seen so far, per image.
pub(crate) struct Tracker {
    x0: Tensor,
    labels: Vec<u32>,
    norm: Norm,
    best: Tensor,
    /// Distance of `best` from the clean image; `+∞` while none is misclassified.
    dist: Vec<f64>,
}

impl Tracker {
    fn new(x0: &Tensor, labels: Vec<u32>, norm: Norm, clean_logits: &Tensor) -> Result<Self> {
        let pred = predictions(clean_logits)?;
        let dist = pred
            .iter()
            .zip(&labels)
            .map(|(p, y)| if p == y { f64::INFINITY } else { 0.0 })
            .collect();
        Ok(Self {
            x0: x0.clone(),
            labels,
            norm,
            best: x0.clone(),
            dist,
        })
    }

    /// Whether image `i` has a misclassified point (or was misclassified clean).
    fn found(&self, i: usize) -> bool {
        self.dist[i].is_finite()
    }

    /// Images still without a misclassified point.
    fn unfound(&self) -> Vec<bool> {
        (0..self.dist.len()).map(|i| !self.found(i)).collect()
    }

    /// Offers the candidates `cand` (whose logits are `logits`); returns, per image,
    /// whether the candidate is misclassified. Misclassified candidates closer than the
    /// best so far replace it.
    fn offer(&mut self, cand: &Tensor, logits: &Tensor) -> Result<Vec<bool>> {
        self.offer_rows(&Rows::all(self.labels.len()), cand, logits)
    }

    /// [`Tracker::offer`] for the images `rows` only: `cand` and `logits` hold their rows;
    /// returns, per selected image, whether its candidate is misclassified.
    fn offer_rows(&mut self, rows: &Rows, cand: &Tensor, logits: &Tensor) -> Result<Vec<bool>> {
        let pred = predictions(logits)?;
        let adv: Vec<bool> = pred
            .iter()
            .zip(&rows.rows)
            .map(|(p, &i)| *p != self.labels[i])
            .collect();
        if !adv.iter().any(|&a| a) {
            return Ok(adv);
        }
        let d = host_norms(&(cand - rows.of(&self.x0)?)?, self.norm)?;
        let mut better = vec![false; self.dist.len()];
        for (k, &i) in rows.rows.iter().enumerate() {
            if adv[k] && d[k] < self.dist[i] {
                better[i] = true;
                self.dist[i] = d[k];
            }
        }
        if better.iter().any(|&m| m) {
            let mask = row_mask(&better, &self.best)?;
            self.best = mask.where_cond(&rows.put(&cand.detach(), &self.best)?, &self.best)?;
        }
        Ok(adv)
    }

    /// The outcomes, after classifying the best points once more.
    fn finish(self, model: &dyn ModuleT, clean_pred: &[u32]) -> Result<AttackRun> {
        let pred = predictions(&logits(model, &self.best)?)?;
        let mut ok = vec![false; self.labels.len()];
        let mut outcomes = Vec::with_capacity(self.labels.len());
        let l2 = host_norms(&(&self.best - &self.x0)?, Norm::L2)?;
        let linf = host_norms(&(&self.best - &self.x0)?, Norm::Linf)?;
        for (i, &label) in self.labels.iter().enumerate() {
            let clean = clean_pred[i];
            let outcome = if clean != label {
                ok[i] = true;
                AttackOutcome::already_misclassified(i, label, clean)
            } else if self.dist[i].is_finite() && pred[i] != label {
                ok[i] = true;
                AttackOutcome::found(i, label, pred[i], l2[i], linf[i])
            } else {
                if self.dist[i].is_finite() {
                    tracing::warn!(
                        image = i,
                        "attack point no longer misclassified on re-evaluation; counted as failed"
                    );
                }
                AttackOutcome::failed(i, label, clean)
            };
            outcomes.push(outcome);
        }
        let adversarials = row_mask(&ok, &self.best)?.where_cond(&self.best, &self.x0)?;
        Ok(AttackRun {
            outcomes,
            adversarials,
        })
    }
}

// ---- shared tensor helpers -------------------------------------------------------------

/// A selection of a batch's images (rows of dimension 0), in increasing order.
pub(crate) struct Rows {
    rows: Vec<usize>,
    /// `None` when every image is selected (no gathering needed).
    index: Option<Tensor>,
}

impl Rows {
    /// Every image of a batch of `b`.
    fn all(b: usize) -> Self {
        Self {
            rows: (0..b).collect(),
            index: None,
        }
    }

    /// The images `rows` of a batch of `b`.
    fn select(rows: &[usize], b: usize, device: &candle_core::Device) -> Result<Self> {
        let index = if rows.len() == b {
            None
        } else {
            let ids: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
            Some(Tensor::new(ids.as_slice(), device)?)
        };
        Ok(Self {
            rows: rows.to_vec(),
            index,
        })
    }

    /// The selected rows of `t`.
    fn of(&self, t: &Tensor) -> Result<Tensor> {
        Ok(match &self.index {
            None => t.clone(),
            Some(index) => t.index_select(index, 0)?,
        })
    }

    /// `into` with its selected rows replaced by `values` (one row per selected image).
    fn put(&self, values: &Tensor, into: &Tensor) -> Result<Tensor> {
        let Some(index) = &self.index else {
            return Ok(values.clone());
        };
        let mut selected = vec![false; into.dim(0)?];
        for &i in &self.rows {
            selected[i] = true;
        }
        let spread = into.zeros_like()?.index_add(index, values, 0)?;
        Ok(row_mask(&selected, into)?.where_cond(&spread, into)?)
    }
}

/// Evaluation-mode logits, detached.
fn logits(model: &dyn ModuleT, x: &Tensor) -> Result<Tensor> {
    Ok(tulip_models::predict(model, x)?)
}

/// Arg-max class per row of `[B, K]` logits.
fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// The first row of `[B, K]` logits holding a value that is not finite.
fn first_non_finite_row(logits: &Tensor) -> Result<Option<usize>> {
    let k = logits.dim(D::Minus1)?.max(1);
    Ok(host_vec(logits)?
        .chunks(k)
        .position(|row| row.iter().any(|v| !v.is_finite())))
}

/// Per-image norms of `delta`, on the host.
fn host_norms(delta: &Tensor, norm: Norm) -> Result<Vec<f64>> {
    host_vec(&row_norms(delta, norm)?)
}

fn host_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// `u8` mask of `like`'s shape selecting the images `rows[i]`.
fn row_mask(rows: &[bool], like: &Tensor) -> Result<Tensor> {
    let v: Vec<u8> = rows.iter().map(|&r| u8::from(r)).collect();
    let mut shape = vec![1usize; like.rank()];
    shape[0] = v.len();
    Ok(Tensor::from_vec(v, rows.len(), like.device())?
        .reshape(shape)?
        .broadcast_as(like.shape())?
        .contiguous()?)
}

/// `x + scale_i · d_i`, clipped to `[0, 1]`.
fn step_clip(x: &Tensor, d: &Tensor, scale: &[f64]) -> Result<Tensor> {
    Ok(x.broadcast_add(&d.broadcast_mul(&row_scalars(scale, x)?)?)?
        .clamp(0f64, 1f64)?)
}
