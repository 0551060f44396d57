//! The summary statistics of a model on a test split (docs/method.md §5).

use std::fmt::Write as _;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarMap};
use serde::{Deserialize, Serialize};
use tulip_data::{Loader, Split};
use tulip_models::{Classifier, Linearised};
use tulip_penalties::{input_gradient, jacobian_norm, row_norms, weight_product_norm, Norm};

use crate::{EvalError, Result};

/// The model a [`summary`] describes: its forward pass, and what the statistics beyond the
/// forward pass need, each optional.
///
/// - [`SummaryModel::new`]: any Candle model. Error, loss, the Lipschitz estimate, the
///   Jacobian norm and the margins.
/// - [`SummaryModel::with_linearised`]: the model with its nonlinearities replaced by the
///   identity adds the weight-product norm and the certified lower bounds.
/// - [`SummaryModel::with_tensors`] / [`SummaryModel::with_varmap`]: the model's named
///   tensors add the weight norm (over those of rank ≥ 2: convolution and linear
///   weights) and a check that none holds a NaN or an infinity.
/// - [`SummaryModel::of_classifier`]: a `tulip-models` model, with all of it.
#[derive(Clone)]
pub struct SummaryModel<'a> {
    forward: &'a dyn ModuleT,
    dtype: DType,
    device: Device,
    linearised: Option<&'a dyn Linearised>,
    tensors: Vec<(String, Tensor)>,
}

impl<'a> SummaryModel<'a> {
    /// A model that takes images of `dtype` on `device` (the split's bytes are converted).
    pub fn new(model: &'a dyn ModuleT, dtype: DType, device: &Device) -> Self {
        Self {
            forward: model,
            dtype,
            device: device.clone(),
            linearised: None,
            tensors: Vec::new(),
        }
    }

    /// Adds the linearised model (every nonlinearity the identity, evaluation mode), for
    /// the weight-product norm and the certified lower bounds.
    #[must_use]
    pub fn with_linearised(self, linearised: &'a dyn Linearised) -> Self {
        Self {
            linearised: Some(linearised),
            ..self
        }
    }

    /// Adds the model's named tensors, for the weight norm and the finiteness check.
    #[must_use]
    pub fn with_tensors(self, named: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        Self {
            tensors: named.into_iter().collect(),
            ..self
        }
    }

    /// Adds the tensors of a candle-nn `VarMap` (in the order of their names).
    #[must_use]
    pub fn with_varmap(self, vars: &VarMap) -> Self {
        // A poisoned lock (a thread panicked while adding a variable) leaves the tensors
        // themselves readable.
        let data = vars
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut named: Vec<(String, Tensor)> = data
            .iter()
            .map(|(name, v)| (name.clone(), v.as_tensor().clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        self.with_tensors(named)
    }

    /// A model of `tulip-models`: its forward pass, its linearised mode and its tensors
    /// (parameters and buffers), its dtype and device those of its tensors.
    ///
    /// # Errors
    /// [`EvalError::InvalidInput`] for a model without tensors (dtype and device unknown).
    pub fn of_classifier(model: &'a dyn Classifier) -> Result<Self> {
        let first = model.params().all().first().ok_or_else(|| {
            EvalError::InvalidInput("the model has no tensors (dtype and device unknown)".into())
        })?;
        let (dtype, device) = (first.var.dtype(), first.var.device().clone());
        Ok(Self::new(model, dtype, &device)
            .with_linearised(model)
            .with_tensors(
                model
                    .params()
                    .all()
                    .iter()
                    .map(|p| (p.name.clone(), p.var.as_tensor().clone())),
            ))
    }
}

/// How [`summary`] runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummaryOptions {
    /// Images per forward/backward pass. Each batch costs one forward pass, one backward
    /// pass for the loss gradient and one per class for the Jacobian norm.
    pub batch_size: usize,
    /// The tanh scale `t` to report (the [`Classifier`] trait does not expose it; pass
    /// [`tulip_models::Model::tanh_scale`]), or `None` for a model without the tanh layer.
    pub tanh_scale: Option<f64>,
    /// Compute the Jacobian norm over the first this many images only (`None`: all); at
    /// least 1, as a maximum over no image would read as a norm of 0.
    /// The Jacobian costs one backward pass per class, most of the whole summary's time,
    /// so a subset makes a quick look affordable.
    pub jacobian_images: Option<usize>,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            tanh_scale: None,
            jacobian_images: None,
        }
    }
}

/// The summary statistics (docs/method.md §5) of a model on a set of images, model in
/// evaluation mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of images evaluated.
    pub images: usize,
    /// Number of them classified correctly.
    pub correct: usize,
    /// Misclassified fraction, in percent.
    pub test_error_percent: f64,
    /// Mean per-example cross-entropy.
    pub mean_loss: f64,
    /// `max_i ‖∇_x ℓ_i‖₂`: the *per-example, unscaled* input gradient of the loss, not
    /// the `1/B`-scaled row that the training penalty sees (docs/method.md §2), so it
    /// does not depend on the batch size.
    pub lipschitz_estimate: f64,
    /// `max_i max_k ‖∂f_k(x_i)/∂x_i‖₂` (largest row 2-norm of the model Jacobian).
    pub jacobian_norm: f64,
    /// Number of images (the first ones) the Jacobian norm is the maximum over.
    pub jacobian_images: usize,
    /// Largest row 2-norm of the linearised model's matrix `M` (the "2,∞" norm); `None`
    /// without a linearised model.
    pub weight_product_norm: Option<f64>,
    /// Smallest softmax margin (top-1 minus top-2 probability) over the correctly
    /// classified images; `None` if none is.
    pub min_margin: Option<f64>,
    /// `min_margin / (2 · weight_product_norm)`, the reference's lower bound on the
    /// adversarial L2 distance; `None` if no image is correctly classified, or without a
    /// linearised model.
    pub distance_lower_bound: Option<f64>,
    /// `‖w‖₂` over the convolution and linear weights: the tensors of rank ≥ 2 (for a
    /// `tulip-models` model, the Tikhonov penalty's
    /// [`tulip_penalties::TikhonovScope::WeightsOnly`] set: biases, batch-norm terms and
    /// `t` excluded); `None` without the model's tensors.
    pub weight_norm: Option<f64>,
    /// The tanh scale `t`, if the model has the tanh output layer.
    pub tanh_scale: Option<f64>,
}

/// The certified lower bound of one correctly classified image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CertifiedImage {
    /// Position of the image in the evaluated split.
    pub index: usize,
    /// Its label (the model predicts it).
    pub label: u32,
    /// Its softmax margin, top-1 minus top-2 probability.
    pub margin: f64,
    /// `margin / (2 · weight-product norm)`: no L2 perturbation smaller than this should
    /// change the prediction (the reference's bound; see [`crate::certificate_violations`]).
    pub lower_bound: f64,
}

/// What [`summary`] returns: the statistics and the per-image bounds behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryReport {
    /// The summary statistics.
    pub summary: Summary,
    /// One entry per correctly classified image, in split order; empty without a
    /// linearised model.
    pub certified: Vec<CertifiedImage>,
}

impl Summary {
    /// A human-readable table, one statistic per line.
    pub fn to_table(&self) -> String {
        let opt = |v: Option<f64>, none: &str| v.map_or_else(|| none.to_string(), fmt_num);
        let rows: Vec<(&str, String)> = vec![
            ("images", self.images.to_string()),
            ("test error", format!("{:.2} %", self.test_error_percent)),
            ("mean cross-entropy loss", fmt_num(self.mean_loss)),
            (
                "Lipschitz estimate max_i ‖∇ₓℓ_i‖₂",
                format!(
                    "{}  (per-example, unscaled)",
                    fmt_num(self.lipschitz_estimate)
                ),
            ),
            (
                "Jacobian norm",
                if self.jacobian_images == self.images {
                    fmt_num(self.jacobian_norm)
                } else {
                    format!(
                        "{}  (first {} images)",
                        fmt_num(self.jacobian_norm),
                        self.jacobian_images
                    )
                },
            ),
            (
                "weight-product norm (2,∞)",
                opt(self.weight_product_norm, "— (no linearised model)"),
            ),
            (
                "min softmax margin (correct images)",
                opt(self.min_margin, "— (no image correct)"),
            ),
            (
                "distance lower bound margin/(2·wpn)",
                opt(self.distance_lower_bound, "—"),
            ),
            (
                "‖w‖₂ (conv/linear weights)",
                opt(self.weight_norm, "— (no tensors given)"),
            ),
            ("tanh scale t", opt(self.tanh_scale, "— (no tanh layer)")),
        ];
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let pad = width - k.chars().count();
            let _ = writeln!(out, "{k}{}  {v}", " ".repeat(pad));
        }
        out
    }
}

/// Six significant digits, scientific notation for very small or large values.
pub(crate) fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || (1e-3..1e6).contains(&v.abs()) {
        format!("{v:.6}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.5e}")
    }
}

/// The summary of `model` on every image of `split` (converted to the model's dtype and
/// device), in batches of `options.batch_size`. `progress(done, total)` is called after
/// each batch with the number of images done.
///
/// # Errors
/// An empty split, a zero batch size, a Jacobian image limit of 0, a model without
/// tensors, or a failed tensor operation (e.g. images of another shape than the model's
/// input).
/// [`EvalError::NonFinite`] for a model with a NaN or infinite tensor, or whose outputs,
/// gradients or statistics are not finite: such a summary would be meaningless (NaN
/// gradient norms read as 0, NaN margins compare as nothing).
pub fn summary(
    model: &SummaryModel<'_>,
    split: &Split,
    options: &SummaryOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SummaryReport> {
    check(split.len(), options)?;
    let loader = Loader::test(split, options.batch_size.min(split.len()), &model.device)?;
    let batches = loader
        .epoch(0)
        .map(|b| b.map(|b| (b.images, b.labels)).map_err(EvalError::from));
    run(model, batches, split.len(), options, progress)
}

/// [`summary`] of in-memory images `[N, C, H, W]` with labels `[N]` (any integer dtype),
/// for callers (and tests) whose images are not a byte [`Split`].
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Module, VarBuilder, VarMap};
/// use tulip_eval::{summary_of_tensors, SummaryModel, SummaryOptions};
///
/// let vars = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vars, DType::F64, &Device::Cpu);
/// let fc = candle_nn::linear(4, 3, vb.pp("fc"))?;
/// let model = candle_nn::func_t(move |x, _| fc.forward(&x.flatten_from(1)?));
/// let images = Tensor::rand(0f64, 1., (6, 1, 2, 2), &Device::Cpu)?;
/// let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &Device::Cpu)?;
/// let subject = SummaryModel::new(&model, DType::F64, &Device::Cpu).with_varmap(&vars);
/// let report = summary_of_tensors(&subject, &images, &labels, &SummaryOptions::default(), &mut |_, _| {})?;
/// assert_eq!(report.summary.images, 6);
/// assert!(report.summary.weight_norm.is_some()); // from the VarMap
/// assert!(report.summary.weight_product_norm.is_none()); // no linearised model given
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`summary`].
pub fn summary_of_tensors(
    model: &SummaryModel<'_>,
    images: &Tensor,
    labels: &Tensor,
    options: &SummaryOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SummaryReport> {
    let n = images.dim(0)?;
    check(n, options)?;
    if labels.dims() != [n] {
        return Err(EvalError::InvalidInput(format!(
            "{n} images but labels of shape {:?}",
            labels.dims()
        )));
    }
    let bs = options.batch_size;
    let batches = (0..n).step_by(bs).map(|start| {
        let len = bs.min(n - start);
        Ok((images.narrow(0, start, len)?, labels.narrow(0, start, len)?))
    });
    run(model, batches, n, options, progress)
}

fn check(n: usize, options: &SummaryOptions) -> Result<()> {
    if n == 0 {
        return Err(EvalError::InvalidInput("no images to evaluate".into()));
    }
    if options.batch_size == 0 {
        return Err(EvalError::InvalidInput(
            "the batch size must be at least 1".into(),
        ));
    }
    if options.jacobian_images == Some(0) {
        return Err(EvalError::InvalidInput(
            "the Jacobian norm needs at least one image (a limit of 0 images was asked for; \
             no limit takes every image)"
                .into(),
        ));
    }
    Ok(())
}

/// Running totals over the batches.
#[derive(Default)]
struct Totals {
    images: usize,
    correct: usize,
    loss_sum: f64,
    lipschitz: f64,
    jacobian: f64,
    jacobian_images: usize,
    certified: Vec<(usize, u32, f64)>,
}

fn run(
    model: &SummaryModel<'_>,
    batches: impl Iterator<Item = Result<(Tensor, Tensor)>>,
    total: usize,
    options: &SummaryOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SummaryReport> {
    let (dtype, device) = (model.dtype, &model.device);
    let bad = tulip_models::params::non_finite_tensors(
        model.tensors.iter().map(|(name, t)| (name.as_str(), t)),
    )?;
    if !bad.is_empty() {
        return Err(EvalError::NonFinite(format!(
            "the model's tensors hold NaN or infinite values ({})",
            name_list(&bad)
        )));
    }
    let mut t = Totals::default();
    // One image, for the shape, dtype and device of the weight-product norm's basis.
    let mut first_image = None;
    for batch in batches {
        let (images, labels) = batch?;
        let x = images.to_device(device)?.to_dtype(dtype)?;
        if first_image.is_none() {
            first_image = Some(x.narrow(0, 0, 1)?);
        }
        let labels = labels.to_device(device)?.to_dtype(DType::U32)?;
        let jacobian_left = options
            .jacobian_images
            .map_or(usize::MAX, |n| n.saturating_sub(t.jacobian_images));
        accumulate(model.forward, &x, &labels, jacobian_left, &mut t)?;
        progress(t.images, total);
    }
    let wpn = match (model.linearised, &first_image) {
        (Some(l), Some(image)) => Some(weight_product_norm(l, image)?),
        _ => None,
    };
    let weight_norm = weight_norm(&model.tensors)?;
    let certified: Vec<CertifiedImage> = match wpn {
        Some(wpn) => t
            .certified
            .iter()
            .map(|&(index, label, margin)| CertifiedImage {
                index,
                label,
                margin,
                lower_bound: margin / (2.0 * wpn),
            })
            .collect(),
        None => Vec::new(),
    };
    let min_margin = t.certified.iter().map(|c| c.2).reduce(f64::min);
    let n = t.images as f64;
    let summary = Summary {
        images: t.images,
        correct: t.correct,
        test_error_percent: 100.0 * (1.0 - t.correct as f64 / n),
        mean_loss: t.loss_sum / n,
        lipschitz_estimate: t.lipschitz,
        jacobian_norm: t.jacobian,
        jacobian_images: t.jacobian_images,
        weight_product_norm: wpn,
        min_margin,
        distance_lower_bound: min_margin.zip(wpn).map(|(m, wpn)| m / (2.0 * wpn)),
        weight_norm,
        tanh_scale: options.tanh_scale,
    };
    check_finite(&summary)?;
    Ok(SummaryReport { summary, certified })
}

/// `‖w‖₂` over the tensors of rank ≥ 2, summed in their dtype in the order given; `None`
/// for no tensors.
fn weight_norm(tensors: &[(String, Tensor)]) -> Result<Option<f64>> {
    let mut total: Option<Tensor> = None;
    for (_, t) in tensors.iter().filter(|(_, t)| t.rank() >= 2) {
        let s = t.sqr()?.sum_all()?;
        total = Some(match total {
            Some(sum) => (sum + s)?,
            None => s,
        });
    }
    match total {
        Some(sum) => Ok(Some(sum.to_dtype(DType::F64)?.to_scalar::<f64>()?.sqrt())),
        None if tensors.is_empty() => Ok(None),
        None => Ok(Some(0.0)),
    }
}

/// Up to five names, then how many more there are.
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut list = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        let _ = write!(list, " and {} more", names.len() - SHOWN);
    }
    list
}

/// Every statistic of `s` is finite (the per-image bounds are the margins, finite, over
/// the same weight-product norm as [`Summary::distance_lower_bound`]).
fn check_finite(s: &Summary) -> Result<()> {
    let values = [
        ("mean loss", Some(s.mean_loss)),
        ("Lipschitz estimate", Some(s.lipschitz_estimate)),
        ("Jacobian norm", Some(s.jacobian_norm)),
        ("weight-product norm", s.weight_product_norm),
        ("min margin", s.min_margin),
        ("distance lower bound", s.distance_lower_bound),
        ("weight norm", s.weight_norm),
        ("tanh scale", s.tanh_scale),
    ];
    let bad: Vec<String> = values
        .iter()
        .filter_map(|&(name, v)| v.filter(|v| !v.is_finite()).map(|v| format!("{name} {v}")))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(EvalError::NonFinite(format!(
            "statistics of the model: {}",
            bad.join(", ")
        )))
    }
}

/// An error unless every element of `t` is finite (`sum(t − t)` is NaN otherwise).
fn ensure_finite(t: &Tensor, what: impl FnOnce() -> String) -> Result<()> {
    let s = t
        .sub(t)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    if s.is_finite() {
        Ok(())
    } else {
        Err(EvalError::NonFinite(what()))
    }
}

/// Adds one batch to the totals. Loss, prediction and margin are computed on the host in
/// `f64` from the logits (one forward pass); the gradient and Jacobian norms come from
/// the penalty crate's helpers.
fn accumulate(
    model: &dyn ModuleT,
    x: &Tensor,
    labels: &Tensor,
    jacobian_left: usize,
    t: &mut Totals,
) -> Result<()> {
    let logits: Vec<Vec<f64>> = tulip_models::predict(model, x)?
        .to_dtype(DType::F64)?
        .to_vec2()?;
    let ys: Vec<u32> = labels.to_vec1()?;
    if let Some(i) = logits
        .iter()
        .position(|row| row.iter().any(|v| !v.is_finite()))
    {
        return Err(EvalError::NonFinite(format!(
            "the model's output for image {} is {:?}",
            t.images + i,
            logits[i]
        )));
    }
    for (row, &y) in logits.iter().zip(&ys) {
        let s = softmax_stats(row, y as usize)?;
        t.loss_sum += s.loss;
        if s.predicted == y as usize {
            t.correct += 1;
            t.certified.push((t.images, y, s.margin));
        }
        t.images += 1;
    }
    let g = input_gradient(model, x, labels, false)?.gradient;
    // Checked here, where the error can name the images (`f64::max` below would drop a NaN).
    ensure_finite(&g, || {
        format!(
            "the loss gradient for images {}..{}",
            t.images - ys.len(),
            t.images
        )
    })?;
    let lip = row_norms(&g, Norm::L2)?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    t.lipschitz = t.lipschitz.max(lip);
    let jn = jacobian_left.min(ys.len());
    if jn > 0 {
        let norm = jacobian_norm(model, &x.narrow(0, 0, jn)?)?;
        if !norm.is_finite() {
            return Err(EvalError::NonFinite(format!(
                "the Jacobian norm of images {}..{} is {norm}",
                t.images - ys.len(),
                t.images - ys.len() + jn
            )));
        }
        t.jacobian = t.jacobian.max(norm);
        t.jacobian_images += jn;
    }
    Ok(())
}

/// Cross-entropy, prediction and softmax margin of one row of logits.
struct SoftmaxStats {
    loss: f64,
    predicted: usize,
    margin: f64,
}

fn softmax_stats(z: &[f64], label: usize) -> Result<SoftmaxStats> {
    if label >= z.len() {
        return Err(EvalError::InvalidInput(format!(
            "label {label} out of range for {} classes",
            z.len()
        )));
    }
    // First index of the maximum (ties go to the lower class, as Candle's argmax).
    let predicted = z
        .iter()
        .enumerate()
        .fold(0, |best, (k, &v)| if v > z[best] { k } else { best });
    let max = z[predicted];
    let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
    let loss = sum.ln() + max - z[label];
    let mut p: Vec<f64> = z.iter().map(|v| (v - max).exp() / sum).collect();
    p.sort_by(|a, b| b.total_cmp(a));
    let margin = p[0] - p.get(1).copied().unwrap_or(0.0);
    Ok(SoftmaxStats {
        loss,
        predicted,
        margin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_stats_closed_form() {
        let s = softmax_stats(&[0.0, (2f64).ln(), 0.0], 1).unwrap();
        // Probabilities 1/4, 1/2, 1/4.
        assert_eq!(s.predicted, 1);
        assert!((s.margin - 0.25).abs() < 1e-15);
        assert!((s.loss - 2f64.ln()).abs() < 1e-15);
        assert!(softmax_stats(&[0.0, 1.0], 2).is_err());
    }

    #[test]
    fn numbers_format_compactly() {
        assert_eq!(fmt_num(1.5), "1.5");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1.25e-5), "1.25000e-5");
    }
}
