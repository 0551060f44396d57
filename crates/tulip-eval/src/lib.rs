//! # tulip-eval
//!
//! Evaluation of Tulip-rs models, and of any Candle model (docs/method.md §5):
//!
//! - [`summary`]: test error, loss, the per-example gradient norm, the Jacobian and
//!   weight-product norms, the smallest softmax margin and the lower bound on the
//!   adversarial distance it gives, `‖w‖₂` and the tanh scale — plus each correctly
//!   classified image's own lower bound ([`CertifiedImage`]). A [`SummaryModel`] says
//!   what the model offers: any `candle_nn::ModuleT`, with its tensors and its linearised
//!   form where the statistics that need them are wanted.
//! - [`attack_split`]: an evaluation attack on every image of a split, in batches, and
//!   [`write_attack_files`]: its per-image CSV, summary, robustness curve and the chart
//!   against the certified bounds.
//! - [`nearest_different_label`]: the nearest-different-label-neighbour distances of a
//!   dataset and its Lipschitz constant, as blocked matrix products.
//! - [`AttackSummary`]: the attacks' per-image [`AttackOutcome`]s (written as CSV)
//!   summarised as median, mean and misclassified fraction at given budgets; failures are
//!   counted, never treated as distance 0.
//! - [`plot`]: robustness curves and the bound-vs-attack scatter as dependency-free SVG,
//!   on log axes where the values span more than two decades, with padded ranges;
//!   [`certificate_violations`] checks that no attack beats a certified bound.
//!
//! Sits above `tulip-models`, `tulip-data`, `tulip-penalties` and `tulip-adversarial` (it
//! programs against the [`tulip_models::Classifier`] trait and reports the attacks' own
//! outcome type) and below the CLI.
//!
//! ## Design record
//! - The gradient statistic is the *unscaled* per-example `max_i ‖∇_x ℓ_i‖₂`, not the
//!   `1/B`-scaled row of the training penalty (docs/method.md §2), so it does not depend
//!   on the batch size; outputs say so.
//! - `‖w‖₂` counts the Tikhonov penalty's [`tulip_penalties::TikhonovScope::WeightsOnly`]
//!   set (trainable tensors of rank ≥ 2: convolution and linear weights). A name-based
//!   "not ending in `bias`" filter would also count batch-norm scales and the tanh
//!   scale, which are not weights of a linear map.
//! - Loss, prediction and softmax margin are computed on the host in `f64` from the
//!   logits of one evaluation-mode forward pass per batch.
//! - Nearest-neighbour distances: `f32` GEMM to choose each neighbour, then the chosen
//!   distance recomputed exactly from the bytes (see [`nn`]), so duplicates are exactly
//!   0 and negative rounding cannot occur.
//! - No statistic is computed from a model with a NaN or infinite tensor, and none is
//!   returned non-finite ([`EvalError::NonFinite`]): a NaN gradient row reads as norm 0
//!   and NaN logits as some class, so such a summary would look healthy.
//! - Every file is written atomically (a temporary file renamed over the target), so a
//!   failed write, a full disk included, never leaves a truncated report.
#![warn(missing_docs)]

mod attack_split;
mod certify;
mod error;
pub mod nn;
pub mod plot;
mod report;
mod summary;
mod table;

pub use attack_split::{attack_split, write_attack_files, AttackFiles};
pub use certify::{
    certificate_violations, certified_pairs, read_certified_csv, write_certified_csv, Violation,
    CERTIFIED_CSV_HEADER, TOLERANCE,
};
pub use error::{EvalError, Result};
pub use nn::{nearest_different_label, NearestNeighbours, NnOptions, NnStats};
pub use report::{
    epsilon_grid, fraction_misclassified, misclassification_curve, read_attack_csv,
    write_attack_csv, write_json, AttackSummary, DistanceStats, FractionAt, ATTACK_CSV_HEADER,
};
pub use summary::{
    summary, summary_of_tensors, CertifiedImage, Summary, SummaryModel, SummaryOptions,
    SummaryReport,
};
pub use tulip_adversarial::{AttackOutcome, AttackStatus, Norm};
