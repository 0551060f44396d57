//! Certified lower bounds against attack distances: the check that no attack beats a
//! bound, the pairs behind the scatter plot, and the per-image bound file.
//!
//! The bound `margin / (2 · weight-product norm)` is the reference's; the weight-product
//! norm is that of the *linearised* model, which bounds the Lipschitz constant of an
//! affine model but not, in general, of a network with ReLUs. So a violation found by
//! [`certificate_violations`] on a real network is a finding about that bound, not
//! necessarily a bug in the attack.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::summary::CertifiedImage;
use crate::table::{read_table, write_table};
use crate::Result;
use tulip_adversarial::{AttackOutcome, Norm};

/// Relative slack of [`certificate_violations`]: an attack distance counts as below the
/// bound only if it is below `bound · (1 − TOLERANCE)`, so rounding (the model runs in
/// `f32`) at a distance equal to the bound is not reported.
pub const TOLERANCE: f64 = 1e-6;

/// An image whose attack distance is below its certified lower bound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// Image index.
    pub index: usize,
    /// Its certified L2 lower bound.
    pub lower_bound: f64,
    /// The L2 distance at which the attack misclassified it.
    pub attack_distance: f64,
}

/// The images (matched by index) whose L2 attack distance is below their certified lower
/// bound. Failed attacks cannot violate a bound; an image certified (correctly classified)
/// but recorded as already misclassified violates it (distance 0), which points to a
/// mismatch between the evaluated and the attacked model.
pub fn certificate_violations(
    certified: &[CertifiedImage],
    attacks: &[AttackOutcome],
) -> Vec<Violation> {
    certified_pairs(certified, attacks)
        .into_iter()
        .filter(|&(_, d, b)| d < b * (1.0 - TOLERANCE))
        .map(|(index, attack_distance, lower_bound)| Violation {
            index,
            lower_bound,
            attack_distance,
        })
        .collect()
}

/// `(index, attack L2 distance, certified lower bound)` for every certified image the
/// attack misclassified, in the order of `certified`: the points of the scatter plot.
pub fn certified_pairs(
    certified: &[CertifiedImage],
    attacks: &[AttackOutcome],
) -> Vec<(usize, f64, f64)> {
    let by_index: std::collections::HashMap<usize, &AttackOutcome> =
        attacks.iter().map(|r| (r.index, r)).collect();
    certified
        .iter()
        .filter_map(|c| {
            let d = by_index.get(&c.index)?.distance(Norm::L2)?;
            Some((c.index, d, c.lower_bound))
        })
        .collect()
}

/// Header of the per-image bound file.
pub const CERTIFIED_CSV_HEADER: &str = "index,label,margin,lower_bound";

/// Writes `index,label,margin,lower_bound`, one correctly classified image per line.
///
/// # Errors
/// The file cannot be written.
pub fn write_certified_csv(path: &Path, certified: &[CertifiedImage]) -> Result<()> {
    let header: Vec<&str> = CERTIFIED_CSV_HEADER.split(',').collect();
    write_table(
        path,
        &header,
        certified.iter().map(|c| {
            [
                c.index.to_string(),
                c.label.to_string(),
                c.margin.to_string(),
                c.lower_bound.to_string(),
            ]
        }),
    )
}

/// Reads a file written by [`write_certified_csv`].
///
/// # Errors
/// The file cannot be read, has another header, or a malformed line.
pub fn read_certified_csv(path: &Path) -> Result<Vec<CertifiedImage>> {
    let header: Vec<&str> = CERTIFIED_CSV_HEADER.split(',').collect();
    read_table(path, &header)?
        .into_iter()
        .map(|row| {
            Ok(CertifiedImage {
                index: row.parse(path, 0)?,
                label: row.parse(path, 1)?,
                margin: row.parse(path, 2)?,
                lower_bound: row.parse(path, 3)?,
            })
        })
        .collect()
}
