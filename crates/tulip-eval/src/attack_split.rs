//! Attacking a whole split: the images in batches, each batch with its own random
//! streams, and the files that report the result (per-image CSV, summary JSON, robustness
//! curve, and the bound-vs-attack chart beside the certified lower bounds).

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::ModuleT;
use tulip_adversarial::{run_attack, AdversarialError, AttackConfig, AttackOutcome, Norm};
use tulip_data::{Loader, Split};

use crate::plot::{certified_scatter_for, robustness_curves_for, write_svg, Series, Subject};
use crate::{
    certificate_violations, certified_pairs, misclassification_curve, write_attack_csv,
    AttackSummary, CertifiedImage, EvalError, Result,
};

/// Seeds of consecutive batches are this far apart, so that no two batches share a random
/// stream for any seed a user is likely to pass.
const BATCH_SEED_STRIDE: u64 = 1_000_003;

/// Attacks every image of `split` with `cfg`, `batch_size` images at a time on `device`,
/// and returns one outcome per image, in the split's order (each outcome's `index` is the
/// image's position in the split). `on_batch` sees each batch's outcomes as they come (for
/// progress bars).
///
/// Batch `b` uses the seed `cfg.seed + b·1,000,003` (the attack seeds image `i` of a batch
/// with stream `i`), so results depend on the batch size but not on where a run stopped.
///
/// # Errors
/// [`EvalError::InvalidInput`] for a batch size of 0 or an empty split;
/// [`EvalError::Attack`] from the attack — a
/// [`AdversarialError::NonFiniteCleanLogits`] names the image's position in the split.
pub fn attack_split(
    model: &dyn ModuleT,
    split: &Split,
    cfg: &AttackConfig,
    batch_size: usize,
    device: &Device,
    mut on_batch: impl FnMut(&[AttackOutcome]),
) -> Result<Vec<AttackOutcome>> {
    if batch_size == 0 || split.is_empty() {
        return Err(EvalError::InvalidInput(format!(
            "cannot attack {} images in batches of {batch_size}",
            split.len()
        )));
    }
    cfg.validate()?;
    let loader = Loader::test(split, batch_size.min(split.len()), device)?;
    let mut outcomes = Vec::with_capacity(split.len());
    for (b, batch) in loader.epoch(0).enumerate() {
        let batch = batch?;
        let start = outcomes.len();
        let batch_cfg = cfg.with_seed(cfg.seed.wrapping_add(b as u64 * BATCH_SEED_STRIDE));
        let found =
            run_attack(model, &batch.images, &batch.labels, &batch_cfg).map_err(|e| match e {
                AdversarialError::NonFiniteCleanLogits { image } => {
                    AdversarialError::NonFiniteCleanLogits {
                        image: start + image,
                    }
                }
                e => e,
            })?;
        outcomes.extend(found.into_iter().map(|o| AttackOutcome {
            index: start + o.index,
            ..o
        }));
        on_batch(&outcomes[start..]);
    }
    Ok(outcomes)
}

/// The files [`write_attack_files`] wrote, and what the certified bounds showed.
#[derive(Debug, Clone)]
pub struct AttackFiles {
    /// Every file written, in order: `NAME.csv`, `NAME.json`, `NAME.svg`, and
    /// `NAME-certified.svg` when bounds were given.
    pub written: Vec<PathBuf>,
    /// With bounds: how many images the attack found below their certified bound.
    pub violations: Option<usize>,
}

/// Writes the report of one attack into `out`: `NAME.csv` (per image), `NAME.json` (the
/// summary), `NAME.svg` (fraction misclassified vs ε in `norm`) and, given the certified
/// lower bounds of the same images, `NAME-certified.svg` (bound against L2 attack
/// distance), where `NAME` is the summary's attack name.
///
/// # Errors
/// A file cannot be written.
pub fn write_attack_files(
    out: &Path,
    summary: &AttackSummary,
    outcomes: &[AttackOutcome],
    norm: Norm,
    subject: &Subject,
    certified: Option<&[CertifiedImage]>,
) -> Result<AttackFiles> {
    std::fs::create_dir_all(out).map_err(EvalError::io(out))?;
    let name = &summary.attack;
    let csv = out.join(format!("{name}.csv"));
    let json = out.join(format!("{name}.json"));
    let svg = out.join(format!("{name}.svg"));
    write_attack_csv(&csv, outcomes)?;
    summary.write_json(&json)?;
    let curve = Series::new(name, misclassification_curve(outcomes, norm));
    write_svg(&svg, &robustness_curves_for(norm, subject, &[curve]))?;
    let mut written = vec![csv, json, svg];
    let violations = match certified {
        Some(certified) => {
            let pairs: Vec<(f64, f64)> = certified_pairs(certified, outcomes)
                .into_iter()
                .map(|(_, distance, bound)| (distance, bound))
                .collect();
            let scatter = out.join(format!("{name}-certified.svg"));
            write_svg(&scatter, &certified_scatter_for(subject, &pairs))?;
            written.push(scatter);
            Some(certificate_violations(certified, outcomes).len())
        }
        None => None,
    };
    Ok(AttackFiles {
        written,
        violations,
    })
}
