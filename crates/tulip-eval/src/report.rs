//! Per-image attack results and their summary (docs/method.md §5, "Attacks").
//!
//! Everything here is computed from the attacks' own per-image [`AttackOutcome`]s. An image
//! the model already misclassifies has distance 0; an image the attack fails on is a
//! failure, counted separately and never treated as distance 0 (nor as ∞) in the median
//! and mean.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tulip_adversarial::{AttackOutcome, AttackStatus, Norm};

use crate::summary::fmt_num;
use crate::table::{read_table, write_table};
use crate::{EvalError, Result};

/// Header of the per-image CSV.
pub const ATTACK_CSV_HEADER: &str = "index,label,predicted,l2,linf,success";

/// Writes the per-image CSV `index,label,predicted,l2,linf,success`: `success` is 1 for
/// a found or already-misclassified image (distances 0), 0 for a failure (distances
/// `NaN`).
///
/// # Errors
/// The file cannot be written.
pub fn write_attack_csv(path: &Path, records: &[AttackOutcome]) -> Result<()> {
    let header: Vec<&str> = ATTACK_CSV_HEADER.split(',').collect();
    write_table(
        path,
        &header,
        records.iter().map(|r| {
            let success = u8::from(r.status != AttackStatus::Failed);
            [
                r.index.to_string(),
                r.label.to_string(),
                r.adversarial_prediction.to_string(),
                r.l2.to_string(),
                r.linf.to_string(),
                success.to_string(),
            ]
        }),
    )
}

/// Reads a CSV written by [`write_attack_csv`]. A success at distance 0 in both norms
/// reads back as [`AttackStatus::AlreadyMisclassified`] (an attack cannot find a
/// misclassified image at distance 0 otherwise).
///
/// # Errors
/// The file cannot be read, has another header, or a malformed line.
pub fn read_attack_csv(path: &Path) -> Result<Vec<AttackOutcome>> {
    let header: Vec<&str> = ATTACK_CSV_HEADER.split(',').collect();
    read_table(path, &header)?
        .into_iter()
        .map(|row| {
            let index: usize = row.parse(path, 0)?;
            let label: u32 = row.parse(path, 1)?;
            let predicted: u32 = row.parse(path, 2)?;
            let (l2, linf): (f64, f64) = (row.parse(path, 3)?, row.parse(path, 4)?);
            Ok(match row.parse::<u8>(path, 5)? {
                0 => AttackOutcome::failed(index, label, predicted),
                1 if l2 == 0.0 && linf == 0.0 => {
                    AttackOutcome::already_misclassified(index, label, predicted)
                }
                1 => AttackOutcome::found(index, label, predicted, l2, linf),
                s => {
                    return Err(EvalError::BadFile {
                        path: path.to_path_buf(),
                        reason: format!("line {}: success {s} is not 0 or 1", row.line()),
                    })
                }
            })
        })
        .collect()
}

/// Median and mean of the distances of the images an attack misclassified (found or
/// already misclassified); `None` when there are none.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistanceStats {
    /// Median (mean of the two middle values for an even count).
    pub median: Option<f64>,
    /// Mean.
    pub mean: Option<f64>,
}

impl DistanceStats {
    /// Statistics of `records` under `norm`, failures excluded.
    pub fn of(records: &[AttackOutcome], norm: Norm) -> Self {
        let mut d: Vec<f64> = records.iter().filter_map(|r| r.distance(norm)).collect();
        if d.is_empty() {
            return Self {
                median: None,
                mean: None,
            };
        }
        d.sort_by(f64::total_cmp);
        let n = d.len();
        let median = if n % 2 == 1 {
            d[n / 2]
        } else {
            0.5 * (d[n / 2 - 1] + d[n / 2])
        };
        Self {
            median: Some(median),
            mean: Some(d.iter().sum::<f64>() / n as f64),
        }
    }
}

/// The fraction of all images misclassified with a perturbation of norm at most ε.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FractionAt {
    /// The budget ε.
    pub epsilon: f64,
    /// Misclassified images (already, or found at distance ≤ ε) over all images; a
    /// failure counts as not misclassified at every ε.
    pub fraction: f64,
}

/// `fraction misclassified` at `epsilon` (see [`FractionAt::fraction`]); 0 for no records.
pub fn fraction_misclassified(records: &[AttackOutcome], norm: Norm, epsilon: f64) -> f64 {
    if records.is_empty() {
        return 0.0;
    }
    let hit = records
        .iter()
        .filter(|r| r.distance(norm).is_some_and(|d| d <= epsilon))
        .count();
    hit as f64 / records.len() as f64
}

/// The whole curve "fraction misclassified vs ε" as the corners of its step function,
/// from ε = 0 to the largest distance found, for plotting ([`crate::plot`]).
pub fn misclassification_curve(records: &[AttackOutcome], norm: Norm) -> Vec<(f64, f64)> {
    let n = records.len().max(1) as f64;
    let mut d: Vec<f64> = records.iter().filter_map(|r| r.distance(norm)).collect();
    d.sort_by(f64::total_cmp);
    let at_zero = d.iter().filter(|&&v| v <= 0.0).count();
    let mut points = vec![(0.0, at_zero as f64 / n)];
    // One vertical step per distinct distance.
    let mut i = at_zero;
    while i < d.len() {
        let v = d[i];
        let j = i + d[i..].iter().take_while(|&&w| w == v).count();
        points.push((v, i as f64 / n));
        points.push((v, j as f64 / n));
        i = j;
    }
    points
}

/// `steps` evenly spaced budgets from `max/steps` to `max` (plus 0).
pub fn epsilon_grid(max: f64, steps: usize) -> Vec<f64> {
    (0..=steps)
        .map(|i| max * i as f64 / steps.max(1) as f64)
        .collect()
}

/// The summary of one attack over a set of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackSummary {
    /// Name of the attack (free text, e.g. `deepfool-l2`).
    pub attack: String,
    /// Images attacked.
    pub images: usize,
    /// Images the attack found an adversarial example for.
    pub found: usize,
    /// Images misclassified before the attack (distance 0).
    pub already_misclassified: usize,
    /// Images the attack failed on (excluded from the median and mean).
    pub failed: usize,
    /// L2 distances over found and already-misclassified images.
    pub l2: DistanceStats,
    /// L∞ distances over found and already-misclassified images.
    pub linf: DistanceStats,
    /// Fraction misclassified at each L2 budget asked for.
    pub misclassified_at_l2: Vec<FractionAt>,
    /// Fraction misclassified at each L∞ budget asked for.
    pub misclassified_at_linf: Vec<FractionAt>,
}

impl AttackSummary {
    /// Summarises `records` of `attack`, with the misclassified fraction at each budget
    /// of `l2_grid` and `linf_grid`.
    pub fn new(
        attack: &str,
        records: &[AttackOutcome],
        l2_grid: &[f64],
        linf_grid: &[f64],
    ) -> Self {
        let count = |s| records.iter().filter(|r| r.status == s).count();
        let at = |norm, grid: &[f64]| {
            grid.iter()
                .map(|&epsilon| FractionAt {
                    epsilon,
                    fraction: fraction_misclassified(records, norm, epsilon),
                })
                .collect()
        };
        Self {
            attack: attack.to_string(),
            images: records.len(),
            found: count(AttackStatus::Found),
            already_misclassified: count(AttackStatus::AlreadyMisclassified),
            failed: count(AttackStatus::Failed),
            l2: DistanceStats::of(records, Norm::L2),
            linf: DistanceStats::of(records, Norm::Linf),
            misclassified_at_l2: at(Norm::L2, l2_grid),
            misclassified_at_linf: at(Norm::Linf, linf_grid),
        }
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let opt = |v: Option<f64>| v.map_or_else(|| "—".to_string(), fmt_num);
        let mut out = String::new();
        let _ = writeln!(out, "attack                  {}", self.attack);
        let _ = writeln!(out, "images                  {}", self.images);
        let _ = writeln!(out, "found                   {}", self.found);
        let _ = writeln!(
            out,
            "already misclassified   {}",
            self.already_misclassified
        );
        let _ = writeln!(out, "failed (not counted)    {}", self.failed);
        let _ = writeln!(
            out,
            "L2 distance             median {}  mean {}",
            opt(self.l2.median),
            opt(self.l2.mean)
        );
        let _ = writeln!(
            out,
            "L∞ distance             median {}  mean {}",
            opt(self.linf.median),
            opt(self.linf.mean)
        );
        for (name, grid) in [
            ("L2", &self.misclassified_at_l2),
            ("L∞", &self.misclassified_at_linf),
        ] {
            for f in grid {
                let _ = writeln!(
                    out,
                    "misclassified at {name} ε = {:<8} {:.2} %",
                    fmt_num(f.epsilon),
                    100.0 * f.fraction
                );
            }
        }
        out
    }

    /// Writes the summary as pretty JSON.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

/// Writes any serialisable value as pretty JSON (non-finite numbers become `null`).
///
/// # Errors
/// The file cannot be written.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| EvalError::BadFile {
        path: path.to_path_buf(),
        reason: format!("cannot serialise: {e}"),
    })?;
    crate::error::write_file(path, (text + "\n").as_bytes())
}
