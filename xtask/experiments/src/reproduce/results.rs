//! The results of a profile's grid: what each run directory holds, one table row per
//! setting (its seeds aggregated), the per-run CSV, the check of every certified bound
//! against every attack distance, the verdict on each of the paper's claims, and the
//! plots.
//!
//! Only finished steps are read (their `done/` marker exists): a step's outputs without
//! its marker may be partial or come from an older checkpoint. Whatever is missing shows
//! as "—" in the table and "not yet measured" in the verdicts; it never fails the command.
//! A file that is there but malformed does.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tulip_eval::plot::{certified_scatter_for, robustness_curves_for, write_svg, Series, Subject};
use tulip_eval::{
    fraction_misclassified, misclassification_curve, read_attack_csv, read_certified_csv,
    AttackOutcome, AttackStatus, CertifiedImage, DistanceStats, Norm, TOLERANCE,
};
use tulip_models::checkpoint::write_atomic;

use super::verdicts::{claims, render_claims, ClaimKeys};
use super::{is_done, AttackSpec, Profile, RunFile, Step};

/// Column keys the verdicts read.
pub(super) const TEST_ERROR: &str = "test_error_percent";
pub(super) const LIPSCHITZ: &str = "lipschitz_estimate";
pub(super) const MEDIAN_L2_CORRECT: &str = "median_l2_correct";
pub(super) const DEEPFOOL_L2_CORRECT: &str = "deepfool_l2_median_correct";

/// One entry of the profile's `attacks`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Attack {
    /// As written in the profile, e.g. `pgd:l2:0.5`.
    pub spec: String,
    pub attack: String,
    /// As written (`l2`, `linf`): names the output file and the step's marker.
    pub norm_name: String,
    pub norm: Norm,
    /// The fixed radius of an attack that has one (PGD): reported as robust accuracy at
    /// that radius, not folded into the minimum distances.
    pub epsilon: Option<f64>,
}

impl Attack {
    pub fn parse(spec: &str) -> Result<Self> {
        let AttackSpec {
            attack,
            norm,
            epsilon,
        } = AttackSpec::parse(spec)?;
        let epsilon = epsilon
            .map(|e| parse_number(e).with_context(|| format!("profile.toml: attack {spec:?}")))
            .transpose()?;
        Ok(Self {
            spec: spec.to_string(),
            attack: attack.to_string(),
            norm_name: norm.to_string(),
            norm: if norm == "l2" { Norm::L2 } else { Norm::Linf },
            epsilon,
        })
    }

    /// `ATTACK-NORM`: the stem of the files `tulip attack` writes.
    pub fn stem(&self) -> String {
        format!("{}-{}", self.attack, self.norm_name)
    }

    /// The column of a fixed-radius attack's robust accuracy.
    fn robust_key(&self) -> String {
        let eps: String = self
            .spec
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{}_{}_{eps}_robust_accuracy_percent",
            self.attack, self.norm_name
        )
    }
}

/// A number, or a fraction `a/b` (budgets are often written `8/255`), as `tulip attack`
/// reads its `--epsilon`.
fn parse_number(s: &str) -> Result<f64> {
    let v = match s.split_once('/') {
        Some((a, b)) => a.trim().parse::<f64>()? / b.trim().parse::<f64>()?,
        None => s.trim().parse::<f64>()?,
    };
    if !(v.is_finite() && v >= 0.0) {
        bail!("{s:?} is not a finite number ≥ 0");
    }
    Ok(v)
}

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// Two decimals.
    Percent,
    /// Four decimals, or three significant digits below 10⁻³.
    Number,
    /// Whole (one decimal for a mean of several seeds).
    Count,
    /// Seconds, shown in minutes.
    Minutes,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        if !v.is_finite() {
            return "—".into();
        }
        match self {
            Unit::Percent => format!("{v:.2}"),
            Unit::Number if v != 0.0 && v.abs() < 1e-3 => format!("{v:.2e}"),
            Unit::Number => format!("{v:.4}"),
            Unit::Count if v.fract() == 0.0 => format!("{v:.0}"),
            Unit::Count => format!("{v:.1}"),
            Unit::Minutes => format!("{:.1}", v / 60.0),
        }
    }
}

/// A numeric column of the table and of the CSV.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ColumnSpec {
    /// CSV header, and the key of the value in [`RunResult::values`].
    pub key: String,
    /// Table header.
    pub header: String,
    pub unit: Unit,
    /// Shown in results.md (every column is in results.csv).
    pub in_table: bool,
}

impl ColumnSpec {
    fn new(key: impl Into<String>, header: impl Into<String>, unit: Unit) -> Self {
        Self {
            key: key.into(),
            header: header.into(),
            unit,
            in_table: true,
        }
    }
}

/// The columns of a profile's table, in order.
pub(super) fn columns(profile: &Profile, attacks: &[Attack]) -> Vec<ColumnSpec> {
    let (e2, einf) = (profile.epsilon_l2, profile.epsilon_linf);
    let mut c = vec![
        ColumnSpec::new(TEST_ERROR, "test error %", Unit::Percent),
        ColumnSpec::new(LIPSCHITZ, "Lipschitz estimate", Unit::Number),
    ];
    for (norm, label, eps) in [("l2", "L2", e2), ("linf", "L∞", einf)] {
        c.extend([
            ColumnSpec::new(
                format!("median_{norm}"),
                format!("median {label}"),
                Unit::Number,
            ),
            ColumnSpec::new(
                format!("median_{norm}_correct"),
                format!("median {label}, correct images"),
                Unit::Number,
            ),
            ColumnSpec::new(
                format!("misclassified_at_{norm}_percent"),
                format!("% misclassified at {label} ε={}", short(eps)),
                Unit::Percent,
            ),
            ColumnSpec::new(
                format!("{norm}_failures"),
                format!("{label} failures"),
                Unit::Count,
            ),
        ]);
    }
    let min_l2 = attacks
        .iter()
        .filter(|a| a.epsilon.is_none() && a.norm == Norm::L2)
        .count();
    if attacks
        .iter()
        .any(|a| a.epsilon.is_none() && a.stem() == "deepfool-l2")
    {
        // The same as "median L2, correct images" when DeepFool is the only L2
        // minimum-distance attack: then in the CSV only.
        c.push(ColumnSpec {
            in_table: min_l2 > 1,
            ..ColumnSpec::new(
                DEEPFOOL_L2_CORRECT,
                "median L2 DeepFool, correct images",
                Unit::Number,
            )
        });
    }
    for a in attacks {
        if let Some(eps) = a.epsilon {
            c.push(ColumnSpec::new(
                a.robust_key(),
                format!(
                    "{} {} robust accuracy % at ε={}",
                    a.attack.to_uppercase(),
                    a.norm.label(),
                    short(eps)
                ),
                Unit::Percent,
            ));
        }
    }
    c.extend([
        ColumnSpec::new(
            "distance_lower_bound",
            "certified lower bound (min)",
            Unit::Number,
        ),
        ColumnSpec::new("training_seconds", "training (min)", Unit::Minutes),
    ]);
    c
}

/// At most four decimals, without trailing zeros (0.5, 0.0314).
fn short(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The setting a run belongs to: `X` for `X-seedN`, else the run itself.
pub(super) fn setting_of(name: &str) -> &str {
    match name.rsplit_once("-seed") {
        Some((base, n))
            if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => name,
    }
}

/// What one run directory holds, as far as its steps have finished.
#[derive(Debug, Clone, Default)]
pub(super) struct RunResult {
    pub name: String,
    pub setting: String,
    pub description: String,
    /// By column key; a missing key is a value not measured (yet).
    pub values: BTreeMap<String, f64>,
    /// Per image, the smallest distance any minimum-distance attack of the norm found.
    pub best_l2: Vec<AttackOutcome>,
    pub best_linf: Vec<AttackOutcome>,
    /// Every finished attack's records, by file stem (fixed-radius attacks included).
    pub attacks: Vec<(String, Vec<AttackOutcome>)>,
    /// The certified bounds of `tulip eval` (its correctly classified images).
    pub certified: Option<Vec<CertifiedImage>>,
    /// From the run's config.toml.
    pub model: Option<String>,
    /// Unix seconds of the train.log's first timestamped line.
    pub log_start: Option<f64>,
    /// Unix seconds of the latest finished step (its marker's modification time).
    pub finished_at: Option<f64>,
}

/// Per image, the smallest distance any attack of `norm` found (0 if the image is already
/// misclassified; a failure only if every attack failed on it).
pub(super) fn best_of(attacks: &[&[AttackOutcome]], norm: Norm) -> Vec<AttackOutcome> {
    let mut best: BTreeMap<usize, AttackOutcome> = BTreeMap::new();
    for records in attacks {
        for r in *records {
            let better = match (best.get(&r.index), r.distance(norm)) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(old), Some(d)) => old.distance(norm).is_none_or(|o| d < o),
            };
            if better {
                best.insert(r.index, *r);
            }
        }
    }
    best.into_values().collect()
}

/// Median over the images the model classifies correctly (the attacked ones): it is
/// informative even when most images are misclassified and the overall median is 0.
fn median_correct(records: &[AttackOutcome], norm: Norm) -> Option<f64> {
    let correct: Vec<AttackOutcome> = records
        .iter()
        .filter(|r| r.status != AttackStatus::AlreadyMisclassified)
        .copied()
        .collect();
    DistanceStats::of(&correct, norm).median
}

/// Reads what `run_dir` holds.
pub(super) fn read_run(
    name: &str,
    run: &RunFile,
    run_dir: &Path,
    attacks: &[Attack],
    profile: &Profile,
) -> Result<RunResult> {
    let mut r = RunResult {
        name: name.to_string(),
        setting: setting_of(name).to_string(),
        description: run.description.clone(),
        ..RunResult::default()
    };
    r.model = std::fs::read_to_string(run_dir.join("config.toml"))
        .ok()
        .and_then(|t| toml::from_str::<toml::Value>(&t).ok())
        .and_then(|v| {
            v.get("model")?
                .get("architecture")?
                .as_str()
                .map(String::from)
        });
    r.log_start = std::fs::read_to_string(run_dir.join("train.log"))
        .ok()
        .and_then(|t| t.lines().find_map(log_time));
    r.finished_at = std::fs::read_dir(super::done_dir(run_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .filter_map(|t| Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64()))
        .reduce(f64::max);

    if is_done(run_dir, &Step::Train) {
        if let Some(s) = std::fs::read_to_string(run_dir.join("test.csv"))
            .ok()
            .and_then(|t| last_of_column(&t, "time"))
        {
            r.values.insert("training_seconds".into(), s);
        }
    }
    if is_done(run_dir, &Step::Eval) {
        let eval: Value = std::fs::read_to_string(run_dir.join("eval.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        for (key, json) in [
            (TEST_ERROR, "test_error_percent"),
            (LIPSCHITZ, "lipschitz_estimate"),
            ("distance_lower_bound", "distance_lower_bound"),
        ] {
            if let Some(v) = eval.get(json).and_then(Value::as_f64) {
                r.values.insert(key.into(), v);
            }
        }
        let certified = run_dir.join("certified.csv");
        if certified.is_file() {
            r.certified = Some(read_certified_csv(&certified)?);
        }
    }
    for a in attacks {
        let csv = run_dir.join("attacks").join(format!("{}.csv", a.stem()));
        if is_done(run_dir, &Step::Attack(&a.attack, &a.norm_name)) && csv.is_file() {
            r.attacks.push((a.stem(), read_attack_csv(&csv)?));
        }
    }
    let records = |stem: &str| {
        r.attacks
            .iter()
            .find(|(s, _)| s == stem)
            .map(|(_, recs)| recs.as_slice())
    };
    let minimum = |norm: Norm| -> Vec<&[AttackOutcome]> {
        attacks
            .iter()
            .filter(|a| a.epsilon.is_none() && a.norm == norm)
            .filter_map(|a| records(&a.stem()))
            .collect()
    };
    let (best_l2, best_linf) = (
        best_of(&minimum(Norm::L2), Norm::L2),
        best_of(&minimum(Norm::Linf), Norm::Linf),
    );
    let mut values = BTreeMap::new();
    for (best, norm, name, eps) in [
        (&best_l2, Norm::L2, "l2", profile.epsilon_l2),
        (&best_linf, Norm::Linf, "linf", profile.epsilon_linf),
    ] {
        if best.is_empty() {
            continue;
        }
        let mut put = |key: String, v: Option<f64>| {
            if let Some(v) = v {
                values.insert(key, v);
            }
        };
        put(
            format!("median_{name}"),
            DistanceStats::of(best, norm).median,
        );
        put(format!("median_{name}_correct"), median_correct(best, norm));
        put(
            format!("misclassified_at_{name}_percent"),
            Some(100.0 * fraction_misclassified(best, norm, eps)),
        );
        put(
            format!("{name}_failures"),
            Some(best.iter().filter(|r| r.distance(norm).is_none()).count() as f64),
        );
    }
    if let Some(d) = records("deepfool-l2").and_then(|recs| median_correct(recs, Norm::L2)) {
        values.insert(DEEPFOOL_L2_CORRECT.into(), d);
    }
    for a in attacks.iter().filter(|a| a.epsilon.is_some()) {
        if let Some(recs) = records(&a.stem()).filter(|recs| !recs.is_empty()) {
            // Robust: the attack found no misclassified image within the radius.
            let robust = recs
                .iter()
                .filter(|r| r.status == AttackStatus::Failed)
                .count();
            values.insert(a.robust_key(), 100.0 * robust as f64 / recs.len() as f64);
        }
    }
    r.values.extend(values);
    r.best_l2 = best_l2;
    r.best_linf = best_linf;
    Ok(r)
}

/// The last value of `column` in a CSV with a header line.
fn last_of_column(csv: &str, column: &str) -> Option<f64> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let k = lines.next()?.split(',').position(|h| h.trim() == column)?;
    lines.next_back()?.split(',').nth(k)?.trim().parse().ok()
}

/// Unix seconds of a log line's leading RFC 3339 timestamp.
fn log_time(line: &str) -> Option<f64> {
    let token = line.split_whitespace().next()?;
    let t = chrono::DateTime::parse_from_rfc3339(token).ok()?;
    Some(t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) * 1e-9)
}

/// Mean and spread of one column over the seeds of a setting that have it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Stat {
    pub mean: f64,
    /// Half the range (largest minus smallest, over two): `mean ± spread` covers every
    /// seed's value. 0 for one seed.
    pub spread: f64,
    /// Seeds with a value.
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let (lo, hi) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        Some(Stat {
            mean: values.iter().sum::<f64>() / values.len() as f64,
            spread: 0.5 * (hi - lo),
            n: values.len(),
        })
    }
}

/// A setting: a run and its seeds (`X`, `X-seed1`, …), aggregated.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Setting {
    pub name: String,
    pub description: String,
    /// Its runs (seeds), measured or not.
    pub runs: Vec<String>,
    /// By column key.
    pub stats: BTreeMap<String, Stat>,
}

impl Setting {
    pub fn stat(&self, key: &str) -> Option<Stat> {
        self.stats.get(key).copied()
    }
}

/// The settings of `runs`, in the order of their first run.
pub(super) fn settings(runs: &[RunResult]) -> Vec<Setting> {
    let mut order: Vec<&str> = Vec::new();
    for r in runs {
        if !order.contains(&r.setting.as_str()) {
            order.push(&r.setting);
        }
    }
    order
        .into_iter()
        .map(|name| {
            let members: Vec<&RunResult> = runs.iter().filter(|r| r.setting == name).collect();
            let keys: std::collections::BTreeSet<&String> =
                members.iter().flat_map(|r| r.values.keys()).collect();
            let stats = keys
                .into_iter()
                .filter_map(|k| {
                    let v: Vec<f64> = members
                        .iter()
                        .filter_map(|r| r.values.get(k))
                        .copied()
                        .collect();
                    Some((k.clone(), Stat::of(&v)?))
                })
                .collect();
            // The description of the setting's own run (not of one of its seeds).
            let description = members
                .iter()
                .find(|r| r.name == name)
                .unwrap_or(&members[0])
                .description
                .clone();
            Setting {
                name: name.to_string(),
                description,
                runs: members.iter().map(|r| r.name.clone()).collect(),
                stats,
            }
        })
        .collect()
}

/// A table cell: `—`, a value, or `mean ± spread` over several seeds, with the count of
/// seeds measured when not all are.
pub(super) fn cell(stat: Option<Stat>, unit: Unit, seeds: usize) -> String {
    let Some(s) = stat else {
        return "—".into();
    };
    let mut t = unit.format(s.mean);
    if s.n >= 2 {
        t += &format!(" ± {}", unit.format(s.spread));
    }
    if s.n < seeds {
        t += &format!(" ({} of {seeds} seeds)", s.n);
    }
    t
}

/// An image whose certified lower bound is above an attack distance.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Violation {
    pub run: String,
    pub attack: String,
    pub index: usize,
    pub bound: f64,
    pub distance: f64,
    pub status: AttackStatus,
}

/// One run's comparison of bounds with attack distances.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RunCheck {
    pub run: String,
    /// Certified images with at least one attack distance.
    pub images: usize,
    /// (image, attack) pairs compared.
    pub pairs: usize,
    /// The pair closest to a violation: smallest distance over bound, with its image,
    /// attack, bound and distance.
    pub closest: Option<(f64, usize, String, f64, f64)>,
}

/// The comparison of every certified bound with every attack distance of its image.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct CertificateCheck {
    pub runs: Vec<RunCheck>,
    pub violations: Vec<Violation>,
}

/// Compares, for every run and every image with a certified L2 lower bound, the bound
/// with the L2 distance of every adversarial example any attack found for that image
/// (whatever norm the attack minimised, fixed-radius attacks included: each is an L2
/// distance to a misclassified point, so no smaller than the true minimum). A distance
/// below `bound · (1 − TOLERANCE)` is a violation.
///
/// Both files index an image by its position in the test split (`tulip eval` and
/// `tulip attack` read the split in order, cut to their first N images), so the indices
/// are matched directly; the labels the two files record must then agree.
///
/// # Errors
/// An image with different labels in certified.csv and an attack's CSV: the two files
/// do not index the same images.
pub(super) fn check_certificates(runs: &[RunResult]) -> Result<CertificateCheck> {
    let mut check = CertificateCheck::default();
    for run in runs {
        let Some(certified) = &run.certified else {
            continue;
        };
        let by_index: HashMap<usize, &CertifiedImage> =
            certified.iter().map(|c| (c.index, c)).collect();
        let mut rc = RunCheck {
            run: run.name.clone(),
            images: 0,
            pairs: 0,
            closest: None,
        };
        let mut seen = std::collections::BTreeSet::new();
        for (attack, records) in &run.attacks {
            for r in records {
                let Some(c) = by_index.get(&r.index) else {
                    continue;
                };
                if c.label != r.label {
                    bail!(
                        "run {}: image {} has label {} in certified.csv but {} in attacks/{attack}.csv: \
                         the two files do not index the same test images",
                        run.name,
                        r.index,
                        c.label,
                        r.label
                    );
                }
                let Some(d) = r.distance(Norm::L2) else {
                    continue;
                };
                seen.insert(r.index);
                rc.pairs += 1;
                let ratio = d / c.lower_bound;
                if rc.closest.as_ref().is_none_or(|(best, ..)| ratio < *best) {
                    rc.closest = Some((ratio, r.index, attack.clone(), c.lower_bound, d));
                }
                if d < c.lower_bound * (1.0 - TOLERANCE) {
                    check.violations.push(Violation {
                        run: run.name.clone(),
                        attack: attack.clone(),
                        index: r.index,
                        bound: c.lower_bound,
                        distance: d,
                        status: r.status,
                    });
                }
            }
        }
        rc.images = seen.len();
        check.runs.push(rc);
    }
    Ok(check)
}

impl CertificateCheck {
    /// Fails, listing them, if any bound is above an attack distance.
    pub fn enforce(&self) -> Result<()> {
        if self.violations.is_empty() {
            return Ok(());
        }
        const SHOWN: usize = 50;
        let mut msg = format!(
            "{} certified lower bound(s) above an attack distance of the same image. A lower \
             bound on the distance to the nearest misclassified image cannot exceed the \
             distance of one that was found: this is a bug (in the bound, the evaluation or \
             the attack), not a result, and no table is written.",
            self.violations.len()
        );
        for v in self.violations.iter().take(SHOWN) {
            let _ = write!(
                msg,
                "\n  run {}, image {}: certified bound {:.4e} > {} L2 distance {:.4e}{}",
                v.run,
                v.index,
                v.bound,
                v.attack,
                v.distance,
                if v.status == AttackStatus::AlreadyMisclassified {
                    " (the attack found the image already misclassified, the evaluation \
                     classified it correctly)"
                } else {
                    ""
                }
            );
        }
        if self.violations.len() > SHOWN {
            let _ = write!(msg, "\n  … and {} more", self.violations.len() - SHOWN);
        }
        bail!(msg)
    }

    fn to_markdown(&self) -> String {
        let mut md = String::from(
            "## Certified bounds against attack distances\n\n\
             For every run and every test image with a certified L2 lower bound (certified.csv: \
             the images `tulip eval` classifies correctly, margin / (2 · weight-product norm)) \
             and an adversarial example from any attack, the bound must not exceed that \
             example's L2 distance (the L2 norm of its perturbation, whatever norm the attack \
             minimised; PGD's included). Images are matched by their position in the test \
             split, and their labels in the two files checked to agree. A violation stops the \
             command: it is a bug, not a result.\n\n",
        );
        if self.runs.is_empty() {
            md += "Not yet measured: no run has both certified bounds and attack results.\n";
            return md;
        }
        md += "| run | images compared | (image, attack) pairs | smallest distance / bound | at image (attack: bound, distance) |\n|---|---|---|---|---|\n";
        for rc in &self.runs {
            let (ratio, at) = match &rc.closest {
                Some((ratio, index, attack, bound, d)) => (
                    format!("{ratio:.3e}"),
                    format!("{index} ({attack}: {bound:.3e}, {d:.3e})"),
                ),
                None => ("—".into(), "—".into()),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {ratio} | {at} |",
                rc.run, rc.images, rc.pairs
            );
        }
        let pairs: usize = self.runs.iter().map(|r| r.pairs).sum();
        let _ = writeln!(
            md,
            "\n{}: {pairs} pairs over {} run(s) compared.",
            if self.violations.is_empty() {
                "No bound exceeds an attack distance"
            } else {
                "VIOLATED"
            },
            self.runs.len()
        );
        md
    }
}

/// Where and when the table was made.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Provenance {
    pub profile: String,
    /// When the table was written.
    pub written: String,
    pub cpu: String,
}

impl Provenance {
    /// Now, on this machine.
    pub fn here(profile: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            profile: profile.to_string(),
            written: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            cpu: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown (no /proc/cpuinfo)".into()),
        }
    }
}

/// The CPU model (`model name` of /proc/cpuinfo) and the number of logical CPUs.
pub(super) fn cpu_model(cpuinfo: &str) -> Option<String> {
    let field = |l: &str, name: &str| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    };
    let model = cpuinfo.lines().find_map(|l| field(l, "model name"))?;
    let cpus = cpuinfo
        .lines()
        .filter(|l| field(l, "processor").is_some())
        .count();
    Some(if cpus > 0 {
        format!("{model} ({cpus} logical CPUs)")
    } else {
        model
    })
}

fn hours(seconds: f64) -> String {
    let m = (seconds / 60.0).round() as u64;
    format!("{} h {:02} min", m / 60, m % 60)
}

fn utc(unix: f64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0).map_or_else(
        || "?".into(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// The wall-clock line of the header.
pub(super) fn wall_clock(runs: &[RunResult]) -> String {
    let trained: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.values.get("training_seconds").copied())
        .collect();
    if trained.is_empty() {
        return "not yet measured (no run has finished training)".into();
    }
    let mut s = format!(
        "{} of training summed over the {} of {} runs that finished it (each run's test.csv)",
        hours(trained.iter().sum()),
        trained.len(),
        runs.len()
    );
    let start = runs.iter().filter_map(|r| r.log_start).reduce(f64::min);
    let end = runs.iter().filter_map(|r| r.finished_at).reduce(f64::max);
    if let (Some(a), Some(b)) = (start, end) {
        if b >= a {
            let _ = write!(
                s,
                "; {} from the first training log line ({}) to the last finished step ({}), \
                 evaluation and attacks included, as are any pauses between sittings",
                hours(b - a),
                utc(a),
                utc(b)
            );
        }
    }
    s
}

/// Everything results.md, results.csv and the plots are made of.
pub(super) struct Grid {
    pub description: String,
    pub attacks: Vec<Attack>,
    pub columns: Vec<ColumnSpec>,
    pub runs: Vec<RunResult>,
    pub settings: Vec<Setting>,
}

impl Grid {
    /// Reads every run of `runs` under `out`.
    pub fn collect(
        profile: &Profile,
        runs: &BTreeMap<String, RunFile>,
        out: &Path,
    ) -> Result<Grid> {
        let attacks = profile
            .attacks
            .iter()
            .map(|s| Attack::parse(s))
            .collect::<Result<Vec<_>>>()?;
        let results = runs
            .iter()
            .map(|(name, run)| {
                read_run(name, run, &out.join(name), &attacks, profile)
                    .with_context(|| format!("run {name}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Grid {
            description: profile.description.clone(),
            columns: columns(profile, &attacks),
            settings: settings(&results),
            runs: results,
            attacks,
        })
    }

    fn keys(&self) -> ClaimKeys {
        ClaimKeys {
            deepfool_l2: self
                .columns
                .iter()
                .any(|c| c.key == DEEPFOOL_L2_CORRECT)
                .then(|| DEEPFOOL_L2_CORRECT.to_string()),
            pgd_l2: self
                .attacks
                .iter()
                .find(|a| a.epsilon.is_some() && a.attack == "pgd" && a.norm == Norm::L2)
                .map(Attack::robust_key),
        }
    }

    /// results.csv: one line per run (every seed), every column.
    pub fn csv(&self) -> String {
        let mut csv = String::from("run,setting,description");
        for c in &self.columns {
            csv += ",";
            csv += &c.key;
        }
        csv += "\n";
        for r in &self.runs {
            let _ = write!(
                csv,
                "{},{},\"{}\"",
                r.name,
                r.setting,
                r.description.replace('"', "'")
            );
            for c in &self.columns {
                csv += ",";
                if let Some(v) = r.values.get(&c.key) {
                    csv += &v.to_string();
                }
            }
            csv += "\n";
        }
        csv
    }

    /// results.md.
    pub fn markdown(
        &self,
        provenance: &Provenance,
        check: &CertificateCheck,
        nn: &Value,
    ) -> String {
        let minimum: Vec<&str> = self
            .attacks
            .iter()
            .filter(|a| a.epsilon.is_none())
            .map(|a| a.spec.as_str())
            .collect();
        let fixed: Vec<&str> = self
            .attacks
            .iter()
            .filter(|a| a.epsilon.is_some())
            .map(|a| a.spec.as_str())
            .collect();
        let mut md = format!(
            "# Reproduction of arXiv:1810.00953 — {}\n\n\
             - Profile: `{}`\n\
             - Table written: {}\n\
             - CPU: {}\n\
             - Wall-clock: {}\n\n",
            self.description,
            provenance.profile,
            provenance.written,
            provenance.cpu,
            wall_clock(&self.runs)
        );
        md += "Written by `cargo xtask reproduce-paper`. One row per setting: a run and its seeds \
               (`X-seedN` is a seed of `X`); with several seeds a cell is `mean ± spread`, the \
               spread being half the range of the seeds (half their difference for two), so \
               the interval covers every seed's value; results.csv has every run. \"—\": not \
               measured yet.\n\n";
        let _ = write!(
            md,
            "The median, % misclassified and failure columns are per image the smallest \
             distance any minimum-distance attack of that norm found (attacks: {}); the median \
             counts already-misclassified images as 0 and leaves failures out (counted in \
             their own column). ",
            if minimum.is_empty() {
                "none".into()
            } else {
                minimum.join(", ")
            }
        );
        if !fixed.is_empty() {
            let _ = write!(
                md,
                "Attacks at a fixed radius ({}) are not folded in: their columns are the robust \
                 accuracy, the % of the attacked images still classified correctly under the \
                 attack at that radius. ",
                fixed.join(", ")
            );
        }
        md += "The Lipschitz estimate is max over test images of the per-example, unscaled \
               ‖∇ₓℓ‖₂; the certified lower bound is the smallest over the correctly classified \
               images of the reference's margin / (2 · weight-product norm); training time is \
               each run's own (test.csv).\n\n";

        let shown: Vec<&ColumnSpec> = self.columns.iter().filter(|c| c.in_table).collect();
        md += "| setting | description | seeds |";
        for c in &shown {
            let _ = write!(md, " {} |", c.header);
        }
        md += "\n|---|---|---|";
        md += &"---|".repeat(shown.len());
        md += "\n";
        for s in &self.settings {
            let _ = write!(md, "| {} | {} | {} |", s.name, s.description, s.runs.len());
            for c in &shown {
                let _ = write!(md, " {} |", cell(s.stat(&c.key), c.unit, s.runs.len()));
            }
            md += "\n";
        }
        if let (Some(mean), Some(median)) = (
            nn.get("mean").and_then(Value::as_f64),
            nn.get("median").and_then(Value::as_f64),
        ) {
            let _ = writeln!(
                md,
                "\nThe data itself (nearest test→train image of another label, L2): mean \
                 {mean:.4}, median {median:.4}, Lipschitz constant of the labelling {}.",
                nn.get("data_lipschitz")
                    .and_then(Value::as_f64)
                    .map_or("—".into(), |v| Unit::Number.format(v))
            );
        }
        md += "\nRobustness curves (minimum-distance attacks, every run): `robustness-l2.svg`, \
               `robustness-linf.svg`; certified bound against each image's smallest attack \
               distance: `certified-RUN.svg`.\n\n";
        md += &check.to_markdown();
        md += "\n";
        md += &render_claims(&claims(&self.settings, &self.keys()));
        md
    }

    /// The robustness curves of every run, and each run's bound-vs-distance scatter.
    pub fn plots(&self, profile: &str) -> Vec<(String, String)> {
        let mut models: Vec<&str> = self
            .runs
            .iter()
            .filter_map(|r| r.model.as_deref())
            .collect();
        models.sort_unstable();
        models.dedup();
        let mut plots = Vec::new();
        for (norm, file) in [
            (Norm::L2, "robustness-l2.svg"),
            (Norm::Linf, "robustness-linf.svg"),
        ] {
            let pick = |r: &RunResult| {
                if norm == Norm::L2 {
                    r.best_l2.clone()
                } else {
                    r.best_linf.clone()
                }
            };
            // The runs measured so far.
            let series: Vec<Series> = self
                .runs
                .iter()
                .map(|r| (r, pick(r)))
                .filter(|(_, records)| !records.is_empty())
                .map(|(r, records)| Series::new(&r.name, misclassification_curve(&records, norm)))
                .collect();
            let subject = Subject {
                run: format!(
                    "{profile} profile, {} of {} runs",
                    series.len(),
                    self.runs.len()
                ),
                model: models.join(", "),
                images: self.runs.iter().map(|r| pick(r).len()).max().unwrap_or(0),
            };
            plots.push((
                file.to_string(),
                robustness_curves_for(norm, &subject, &series),
            ));
        }
        for r in &self.runs {
            let Some(certified) = &r.certified else {
                continue;
            };
            let all: Vec<&[AttackOutcome]> = r.attacks.iter().map(|(_, v)| v.as_slice()).collect();
            let best: HashMap<usize, f64> = best_of(&all, Norm::L2)
                .iter()
                .filter_map(|b| Some((b.index, b.distance(Norm::L2)?)))
                .collect();
            let points: Vec<(f64, f64)> = certified
                .iter()
                .filter_map(|c| Some((*best.get(&c.index)?, c.lower_bound)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let subject = Subject {
                run: r.name.clone(),
                model: r.model.clone().unwrap_or_default(),
                images: points.len(),
            };
            plots.push((
                format!("certified-{}.svg", r.name),
                certified_scatter_for(&subject, &points),
            ));
        }
        plots
    }
}

/// Checks the certified bounds (failing on a violation, before anything is written), then
/// writes results.md, results.csv and the plots into `out`.
pub(super) fn write(grid: &Grid, profile: &str, out: &Path) -> Result<()> {
    let check = check_certificates(&grid.runs)?;
    check.enforce()?;
    let nn: Value = std::fs::read_to_string(out.join("nn-attack.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let md = grid.markdown(&Provenance::here(profile), &check, &nn) + &reference_checks(out)?;
    for (file, svg) in grid.plots(profile) {
        write_svg(&out.join(file), &svg)?;
    }
    for (file, text) in [("results.md", &md), ("results.csv", &grid.csv())] {
        let path = out.join(file);
        write_atomic(&path, text.as_bytes())
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    println!("{md}");
    eprintln!(
        "reproduce-paper: wrote {}/results.md, results.csv and the plots",
        out.display()
    );
    Ok(())
}

/// The outputs of `bench/torch/reference_check.py` saved beside the runs as
/// `reference-check-<run>.txt`, as a section of results.md (empty without any).
fn reference_checks(out: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .with_context(|| format!("could not list {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("reference-check-") && n.ends_with(".txt"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Ok(String::new());
    }
    let mut md = String::from(
        "\n## Reference check: PyTorch and Foolbox 3 on the same weights\n\n\
         `python bench/torch/reference_check.py RUN_DIR` loads the run's checkpoint into a \
         PyTorch model with the reference's module names and recomputes the test error, the \
         Lipschitz estimate and Foolbox's DeepFool L2 distances beside the project's own \
         eval.json and attack files:\n",
    );
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("could not read {}", file.display()))?;
        md += &format!("\n```\n{}\n```\n", text.trim_end());
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tulip_eval::{write_attack_csv, write_certified_csv};

    fn profile(attacks: &[&str]) -> Profile {
        Profile {
            description: "test profile".into(),
            train: Vec::new(),
            eval: Vec::new(),
            attacks: attacks.iter().map(|s| s.to_string()).collect(),
            attack: Vec::new(),
            nn_attack: Vec::new(),
            epsilon_l2: 0.5,
            epsilon_linf: 0.1,
        }
    }

    fn image(index: usize, label: u32, lower_bound: f64) -> CertifiedImage {
        CertifiedImage {
            index,
            label,
            margin: 2.0 * lower_bound,
            lower_bound,
        }
    }

    #[test]
    fn best_of_takes_each_images_smallest_distance_and_fails_only_when_all_failed() {
        let l2 = Norm::L2;
        let deepfool = vec![
            AttackOutcome::found(0, 3, 1, 0.5, 0.1),
            AttackOutcome::failed(1, 3, 3),
            AttackOutcome::failed(2, 3, 3),
            AttackOutcome::found(3, 3, 2, 0.2, 0.05),
        ];
        let fgsm = vec![
            AttackOutcome::found(0, 3, 1, 0.7, 0.02),
            AttackOutcome::found(1, 3, 5, 0.9, 0.03),
            AttackOutcome::failed(2, 3, 3),
            AttackOutcome::already_misclassified(3, 3, 2),
        ];
        let best = best_of(&[&deepfool, &fgsm], l2);
        let d: Vec<Option<f64>> = best.iter().map(|r| r.distance(l2)).collect();
        assert_eq!(d, vec![Some(0.5), Some(0.9), None, Some(0.0)]);
        assert_eq!(
            best.iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        // In L∞ image 0's best is FGSM's, not DeepFool's.
        let best_linf = best_of(
            &[
                &[AttackOutcome::found(0, 3, 1, 0.5, 0.1)],
                &[AttackOutcome::found(0, 3, 1, 0.7, 0.02)],
            ],
            Norm::Linf,
        );
        assert_eq!(best_linf[0].distance(Norm::Linf), Some(0.02));
    }

    #[test]
    fn saved_reference_checks_become_a_section_and_none_adds_nothing() {
        let dir = std::env::temp_dir().join(format!("tulip-refcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(reference_checks(&dir).unwrap(), "");
        std::fs::write(dir.join("reference-check-best.txt"), "verdict: AGREE\n").unwrap();
        std::fs::write(dir.join("other.txt"), "not this\n").unwrap();
        let md = reference_checks(&dir).unwrap();
        assert!(
            md.contains("## Reference check") && md.contains("verdict: AGREE"),
            "{md}"
        );
        assert!(!md.contains("not this"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn seeds_are_named_after_their_setting() {
        assert_eq!(setting_of("baseline-seed1"), "baseline");
        assert_eq!(setting_of("best-seed12"), "best");
        assert_eq!(setting_of("best"), "best");
        assert_eq!(setting_of("j1-seed"), "j1-seed");
        assert_eq!(setting_of("-seed1"), "-seed1");
        assert_eq!(setting_of("a-seedx"), "a-seedx");
    }

    #[test]
    fn settings_aggregate_their_seeds_as_mean_and_half_range() {
        let run = |name: &str, values: &[(&str, f64)]| RunResult {
            name: name.into(),
            setting: setting_of(name).into(),
            description: format!("{name} run"),
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..RunResult::default()
        };
        let runs = [
            run("baseline", &[(TEST_ERROR, 7.0), (LIPSCHITZ, 10.0)]),
            run("baseline-seed1", &[(TEST_ERROR, 9.0)]),
            run("best", &[]),
            run("best-seed1", &[(TEST_ERROR, 12.0)]),
            run("j1", &[]),
        ];
        let s = settings(&runs);
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["baseline", "best", "j1"]);
        assert_eq!(s[0].runs, ["baseline", "baseline-seed1"]);
        assert_eq!(s[0].description, "baseline run", "the setting's own run's");
        let e = s[0].stat(TEST_ERROR).unwrap();
        assert_eq!((e.mean, e.spread, e.n), (8.0, 1.0, 2));
        assert_eq!(cell(s[0].stat(TEST_ERROR), Unit::Percent, 2), "8.00 ± 1.00");
        // One of two seeds measured: said so.
        assert_eq!(
            cell(s[0].stat(LIPSCHITZ), Unit::Number, 2),
            "10.0000 (1 of 2 seeds)"
        );
        assert_eq!(
            cell(s[1].stat(TEST_ERROR), Unit::Percent, 2),
            "12.00 (1 of 2 seeds)"
        );
        assert_eq!(cell(s[2].stat(TEST_ERROR), Unit::Percent, 1), "—");
        assert_eq!(Unit::Count.format(3.0), "3");
        assert_eq!(Unit::Count.format(3.5), "3.5");
        assert_eq!(Unit::Minutes.format(90.0), "1.5");
        assert_eq!(Unit::Number.format(5.5e-8), "5.50e-8");
        let three = Stat::of(&[1.0, 2.0, 6.0]).unwrap();
        assert_eq!((three.mean, three.spread, three.n), (3.0, 2.5, 3));
        assert_eq!(Stat::of(&[]), None);
    }

    /// A run with bounds for images 0, 1 and 5 (label 3) and two attacks.
    fn checked_run(pgd: Vec<AttackOutcome>) -> RunResult {
        RunResult {
            name: "baseline".into(),
            setting: "baseline".into(),
            certified: Some(vec![image(0, 3, 0.2), image(1, 3, 0.3), image(5, 3, 0.1)]),
            attacks: vec![
                (
                    "deepfool-l2".into(),
                    vec![
                        AttackOutcome::found(0, 3, 1, 0.5, 0.1),
                        AttackOutcome::failed(1, 3, 3),
                        AttackOutcome::already_misclassified(2, 4, 1),
                        AttackOutcome::found(5, 3, 2, 0.1, 0.01),
                    ],
                ),
                ("pgd-linf".into(), pgd),
            ],
            ..RunResult::default()
        }
    }

    #[test]
    fn no_certified_bound_above_an_attack_distance_passes() {
        // PGD's L2 distance at image 0 (0.25) is the tightest; image 5 sits at its bound
        // exactly, which is not a violation.
        let run = checked_run(vec![
            AttackOutcome::found(0, 3, 1, 0.25, 0.1),
            AttackOutcome::failed(1, 3, 3),
        ]);
        let check = check_certificates(&[run, RunResult::default()]).unwrap();
        assert!(check.violations.is_empty());
        check.enforce().unwrap();
        assert_eq!(check.runs.len(), 1, "a run without bounds is not checked");
        let rc = &check.runs[0];
        assert_eq!((rc.images, rc.pairs), (2, 3));
        let (ratio, index, attack, ..) = rc.closest.clone().unwrap();
        assert_eq!((ratio, index, attack.as_str()), (1.0, 5, "deepfool-l2"));
        assert!(check
            .to_markdown()
            .contains("No bound exceeds an attack distance"));
    }

    #[test]
    fn a_certified_bound_above_an_attack_distance_fails_with_the_numbers() {
        // PGD-L∞ misclassified image 1 at L2 distance 0.2, below its bound 0.3; image 0
        // was found already misclassified though certified (distance 0).
        let run = checked_run(vec![
            AttackOutcome::already_misclassified(0, 3, 1),
            AttackOutcome::found(1, 3, 7, 0.2, 0.1),
        ]);
        let check = check_certificates(&[run]).unwrap();
        let v: Vec<(usize, &str, f64, f64)> = check
            .violations
            .iter()
            .map(|v| (v.index, v.attack.as_str(), v.bound, v.distance))
            .collect();
        assert_eq!(v, [(0, "pgd-linf", 0.2, 0.0), (1, "pgd-linf", 0.3, 0.2)]);
        let err = check.enforce().unwrap_err().to_string();
        assert!(err.contains("2 certified lower bound(s)"), "{err}");
        assert!(
            err.contains(
                "run baseline, image 1: certified bound 3.0000e-1 > pgd-linf L2 distance 2.0000e-1"
            ),
            "{err}"
        );
        assert!(err.contains("already misclassified"), "{err}");
    }

    #[test]
    fn images_indexed_differently_in_the_two_files_are_an_error() {
        let mut run = checked_run(Vec::new());
        run.attacks[0].1[0] = AttackOutcome::found(0, 8, 1, 0.5, 0.1);
        let err = check_certificates(&[run]).unwrap_err().to_string();
        assert!(
            err.contains("image 0 has label 3 in certified.csv but 8"),
            "{err}"
        );
    }

    #[test]
    fn header_facts_are_read_from_the_machine_and_the_run_dirs() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: x\n\n\
                       processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) Processor (2 logical CPUs)")
        );
        assert_eq!(cpu_model(""), None);
        let csv = "epoch,time,test_loss\n0,157.8,0.6\n5,1311.5,0.2\n\n";
        assert_eq!(last_of_column(csv, "time"), Some(1311.5));
        assert_eq!(last_of_column(csv, "nope"), None);
        assert_eq!(last_of_column("epoch,time\n", "time"), None);
        let t = log_time("2026-12-04T06:23:41.5Z  INFO tulip::train: malloc").unwrap();
        assert_eq!(t, 1_796_365_421.5);
        assert_eq!(log_time("done: 6 epochs"), None);

        let mut a = RunResult::default();
        assert!(wall_clock(&[a.clone()]).starts_with("not yet measured"));
        a.values.insert("training_seconds".into(), 3600.0);
        a.log_start = Some(t);
        a.finished_at = Some(t + 2.0 * 3600.0 + 30.0 * 60.0);
        let b = RunResult {
            values: [("training_seconds".to_string(), 1800.0)].into(),
            ..RunResult::default()
        };
        let w = wall_clock(&[a, b, RunResult::default()]);
        assert!(
            w.starts_with("1 h 30 min of training summed over the 2 of 3 runs"),
            "{w}"
        );
        assert!(
            w.contains("2 h 30 min from the first training log line (2026-12-04 06:23 UTC)"),
            "{w}"
        );
    }

    /// Writes a finished run: eval.json and certified.csv, then the attacks' CSVs, each
    /// with its marker.
    fn write_run(dir: &Path, test_error: f64, attacks: &[(&str, Vec<AttackOutcome>)]) {
        std::fs::create_dir_all(dir.join("attacks")).unwrap();
        let mut steps = vec!["train".to_string(), "eval".to_string()];
        std::fs::write(
            dir.join("eval.json"),
            format!(
                r#"{{"test_error_percent": {test_error}, "lipschitz_estimate": 20.0, "distance_lower_bound": 1e-3}}"#
            ),
        )
        .unwrap();
        std::fs::write(dir.join("test.csv"), "epoch,time\n0,60\n1,120\n").unwrap();
        std::fs::write(
            dir.join("config.toml"),
            "# sha256 of the lines below: 0\n[model]\narchitecture = \"resnet22\"\n",
        )
        .unwrap();
        // Image 2 is misclassified: not certified.
        let certified: Vec<CertifiedImage> = [0, 1, 3].map(|i| image(i, 1, 0.01)).to_vec();
        write_certified_csv(&dir.join("certified.csv"), &certified).unwrap();
        for (stem, records) in attacks {
            write_attack_csv(&dir.join("attacks").join(format!("{stem}.csv")), records).unwrap();
            steps.push(format!("attack-{stem}"));
        }
        std::fs::create_dir_all(dir.join("done")).unwrap();
        for s in steps {
            std::fs::write(dir.join("done").join(s), "").unwrap();
        }
    }

    #[test]
    fn the_table_keeps_pgd_apart_aggregates_seeds_and_shows_what_is_missing() {
        let out = tempfile::tempdir().unwrap();
        let p = profile(&[
            "deepfool:l2",
            "deepfool:linf",
            "pgd:l2:0.5",
            "pgd:linf:8/255",
        ]);
        let deepfool = vec![
            AttackOutcome::found(0, 1, 2, 0.5, 0.05),
            AttackOutcome::found(1, 1, 2, 0.7, 0.07),
            AttackOutcome::already_misclassified(2, 1, 2),
            AttackOutcome::found(3, 1, 2, 0.9, 0.09),
        ];
        // PGD finds closer points on three images and fails on one (robust: 25 %).
        let pgd = vec![
            AttackOutcome::found(0, 1, 2, 0.1, 0.01),
            AttackOutcome::found(1, 1, 2, 0.1, 0.01),
            AttackOutcome::already_misclassified(2, 1, 2),
            AttackOutcome::failed(3, 1, 1),
        ];
        write_run(
            &out.path().join("baseline"),
            8.0,
            &[("deepfool-l2", deepfool.clone()), ("pgd-l2", pgd.clone())],
        );
        write_run(
            &out.path().join("baseline-seed1"),
            9.0,
            &[("deepfool-l2", deepfool.clone()), ("pgd-l2", pgd.clone())],
        );
        // A PGD CSV without its marker (cut short): not read.
        std::fs::remove_file(out.path().join("baseline-seed1/done/attack-pgd-l2")).unwrap();
        let runs: BTreeMap<String, RunFile> = ["baseline", "baseline-seed1", "j1"]
            .iter()
            .map(|n| {
                let run = RunFile {
                    description: format!("{n} described"),
                    train: Vec::new(),
                };
                (n.to_string(), run)
            })
            .collect();
        let grid = Grid::collect(&p, &runs, out.path()).unwrap();

        let base = &grid.runs[0];
        // The minimum distances are DeepFool's alone: {0.5, 0.7, 0, 0.9}.
        assert_eq!(base.values["median_l2"], 0.6);
        assert_eq!(base.values["median_l2_correct"], 0.7);
        assert_eq!(base.values["misclassified_at_l2_percent"], 50.0);
        assert_eq!(base.values[DEEPFOOL_L2_CORRECT], 0.7);
        assert_eq!(base.values["pgd_l2_0.5_robust_accuracy_percent"], 25.0);
        assert!(
            !base.values.contains_key("median_linf"),
            "no L∞ attack finished"
        );
        assert!(!base
            .values
            .contains_key("pgd_linf_8_255_robust_accuracy_percent"));
        assert_eq!(base.values["training_seconds"], 120.0);
        assert_eq!(base.model.as_deref(), Some("resnet22"));
        assert!(!grid.runs[1]
            .values
            .contains_key("pgd_l2_0.5_robust_accuracy_percent"));
        assert!(grid.runs[2].values.is_empty(), "j1 has no directory yet");

        let check = check_certificates(&grid.runs).unwrap();
        assert!(check.violations.is_empty());
        let provenance = Provenance {
            profile: "test".into(),
            written: "2026-12-04 12:00 UTC".into(),
            cpu: "a CPU".into(),
        };
        let md = grid.markdown(&provenance, &check, &Value::Null);
        assert!(
            md.contains("- Profile: `test`\n- Table written: 2026-12-04 12:00 UTC\n- CPU: a CPU\n")
        );
        assert!(md.contains("| PGD L2 robust accuracy % at ε=0.5 |"), "{md}");
        assert!(
            md.contains("| PGD L∞ robust accuracy % at ε=0.0314 |"),
            "{md}"
        );
        assert!(
            !md.contains("DeepFool, correct images"),
            "the L2 fold is DeepFool's"
        );
        let row = md.lines().find(|l| l.starts_with("| baseline |")).unwrap();
        assert!(
            row.contains("| 2 | 8.50 ± 0.50 | 20.0000 ± 0.0000 |"),
            "{row}"
        );
        assert!(row.contains("| 25.00 (1 of 2 seeds) |"), "{row}");
        let j1 = md.lines().find(|l| l.starts_with("| j1 |")).unwrap();
        assert_eq!(
            j1.matches("| — ").count(),
            grid.columns.iter().filter(|c| c.in_table).count()
        );
        assert!(md.contains("not yet measured"));
        assert!(md.contains("| baseline | 3 | 5 |"), "images, pairs: {md}");

        let csv = grid.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4, "a header and every run: {csv}");
        assert!(lines[0].starts_with("run,setting,description,test_error_percent,"));
        assert!(lines[2].starts_with("baseline-seed1,baseline,\"baseline-seed1 described\",9,"));
        assert!(lines[3].starts_with("j1,j1,\"j1 described\",,"));

        let plots = grid.plots("test");
        let names: Vec<&str> = plots.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "robustness-l2.svg",
                "robustness-linf.svg",
                "certified-baseline.svg",
                "certified-baseline-seed1.svg"
            ]
        );
        assert!(plots[0]
            .1
            .contains("test profile, 2 of 3 runs · resnet22 · 4 images"));
        assert!(plots[2].1.contains("baseline · resnet22 · 3 images"));

        write(&grid, "test", out.path()).unwrap();
        for f in [
            "results.md",
            "results.csv",
            "robustness-l2.svg",
            "certified-baseline.svg",
        ] {
            assert!(out.path().join(f).is_file(), "{f}");
        }
    }

    #[test]
    fn a_violation_stops_the_table_before_anything_is_written() {
        let out = tempfile::tempdir().unwrap();
        let p = profile(&["deepfool:l2"]);
        // The bounds are 0.01; DeepFool finds image 1 at 0.005.
        write_run(
            &out.path().join("baseline"),
            8.0,
            &[(
                "deepfool-l2",
                vec![
                    AttackOutcome::found(0, 1, 2, 0.5, 0.05),
                    AttackOutcome::found(1, 1, 2, 0.005, 0.001),
                ],
            )],
        );
        let runs = BTreeMap::from([(
            "baseline".to_string(),
            RunFile {
                description: "b".into(),
                train: Vec::new(),
            },
        )]);
        let grid = Grid::collect(&p, &runs, out.path()).unwrap();
        let err = write(&grid, "test", out.path()).unwrap_err().to_string();
        assert!(err.contains("run baseline, image 1"), "{err}");
        assert!(!out.path().join("results.md").exists());
    }
}
