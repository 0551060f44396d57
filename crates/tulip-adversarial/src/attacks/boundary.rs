//! The decision-based Boundary attack (Brendel, Rauber & Bethge 2018), L2.

use std::collections::VecDeque;

use candle_core::{Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::iterative::gaussian;
use super::{host_norms, logits, row_mask, row_scalars, Ctx, Tracker};
use crate::Result;
use tulip_penalties::Norm;

/// Uniform-noise draws per image looking for a misclassified starting point.
const INIT_ATTEMPTS: usize = 100;
/// Initial orthogonal (spherical) and source step sizes, relative to the current distance.
const INITIAL_STEP: f64 = 1e-2;
/// Factor by which the step sizes are adapted.
const STEP_ADAPTATION: f64 = 1.5;
/// Number of recent spherical / full candidates the success rates are measured over.
const SPHERICAL_WINDOW: usize = 20;
const SOURCE_WINDOW: usize = 20;
/// An image has converged once its source step is below this.
const SOURCE_STEP_CONVERGENCE: f64 = 1e-7;

/// Per-image step sizes and recent success records.
struct Steps {
    spherical: f64,
    source: f64,
    spherical_hits: VecDeque<bool>,
    source_hits: VecDeque<bool>,
}

impl Steps {
    fn new() -> Self {
        Self {
            spherical: INITIAL_STEP,
            source: INITIAL_STEP,
            spherical_hits: VecDeque::with_capacity(SPHERICAL_WINDOW),
            source_hits: VecDeque::with_capacity(SOURCE_WINDOW),
        }
    }

    /// Records one iteration and adapts the steps as Foolbox 3 does: a spherical success
    /// rate above 0.5 (below 0.2) makes both steps larger (smaller); a success rate of the
    /// full candidates above 0.25 (below 0.1) makes the source step larger (smaller). A
    /// window is cleared after it caused an adaptation.
    fn record(&mut self, spherical_hit: bool, source_hit: bool) {
        let rate = |q: &VecDeque<bool>| q.iter().filter(|&&h| h).count() as f64 / q.len() as f64;
        self.spherical_hits.push_back(spherical_hit);
        self.source_hits.push_back(source_hit);
        if self.spherical_hits.len() >= SPHERICAL_WINDOW {
            let p = rate(&self.spherical_hits);
            if p > 0.5 {
                self.spherical *= STEP_ADAPTATION;
                self.source *= STEP_ADAPTATION;
                self.spherical_hits.clear();
            } else if p < 0.2 {
                self.spherical /= STEP_ADAPTATION;
                self.source /= STEP_ADAPTATION;
                self.spherical_hits.clear();
            } else {
                self.spherical_hits.pop_front();
            }
        }
        if self.source_hits.len() >= SOURCE_WINDOW {
            let p = rate(&self.source_hits);
            if p > 0.25 {
                self.source *= STEP_ADAPTATION;
                self.source_hits.clear();
            } else if p < 0.1 {
                self.source /= STEP_ADAPTATION;
                self.source_hits.clear();
            } else {
                self.source_hits.pop_front();
            }
        }
    }
}

/// Starts from a misclassified point — uniform noise, blended towards the clean image by
/// bisection on the blend factor (Foolbox's `BlendedUniformNoiseAttack`) — then, for
/// `steps` iterations, proposes per image a random step orthogonal to the direction of
/// the clean image (on the sphere of the current distance) followed by a step towards the
/// clean image, and keeps it if it is misclassified and closer. The step sizes adapt to
/// the success rates (see [`Steps::record`]). Candidates are clipped to `[0, 1]`.
///
/// If no noise draw is misclassified, the nearest other clean image of the batch with a
/// different predicted class serves as the start (a common choice of starting point);
/// images for which neither exists fail. Randomness: image `i` uses ChaCha8
/// stream `i` of the seed for its noise.
pub(super) fn run(ctx: &Ctx<'_>, tracker: &mut Tracker) -> Result<()> {
    let b = ctx.batch();
    let n = ctx.pixels();
    let x0 = ctx.x0;
    let mut rngs: Vec<ChaCha8Rng> = (0..b)
        .map(|i| {
            let mut r = ChaCha8Rng::seed_from_u64(ctx.cfg.seed);
            r.set_stream(i as u64);
            r
        })
        .collect();
    let draw = |rngs: &mut [ChaCha8Rng], rows: &[bool], f: &dyn Fn(&mut ChaCha8Rng) -> f64| {
        let mut v = Vec::with_capacity(b * n);
        for (rng, &row) in rngs.iter_mut().zip(rows) {
            if row {
                v.extend((0..n).map(|_| f(rng)));
            } else {
                v.extend(std::iter::repeat_n(0.0, n));
            }
        }
        Tensor::from_vec(v, x0.shape(), x0.device())?.to_dtype(x0.dtype())
    };

    // 1. A misclassified uniform-noise image per image.
    let mut need = tracker.unfound();
    let mut started = vec![false; b];
    let mut noise = x0.clone();
    for _ in 0..INIT_ATTEMPTS {
        if !need.iter().any(|&w| w) {
            break;
        }
        let mask = row_mask(&need, x0)?;
        let cand = mask.where_cond(&draw(&mut rngs, &need, &|r| r.gen::<f64>())?, x0)?;
        let adv = tracker.offer(&cand, &logits(ctx.model, &cand)?)?;
        let hit: Vec<bool> = (0..b).map(|i| need[i] && adv[i]).collect();
        noise = row_mask(&hit, x0)?.where_cond(&cand, &noise)?;
        for i in 0..b {
            started[i] |= hit[i];
            need[i] &= !hit[i];
        }
    }

    // 1b. Failing that, another clean image of the batch that the model classifies
    // differently from this image's label (the nearest such, in L2).
    if need.iter().any(|&w| w) {
        let clean_pred = super::predictions(&logits(ctx.model, x0)?)?;
        let labels = ctx.labels.to_vec1::<u32>()?;
        let flat = super::host_vec(x0)?;
        let image = |i: usize| &flat[i * n..(i + 1) * n];
        // Row i of the candidate batch is image source[i] (itself unless replaced).
        let mut source: Vec<u32> = (0..b as u32).collect();
        for i in (0..b).filter(|&i| need[i]) {
            let nearest = (0..b)
                .filter(|&j| clean_pred[j] != labels[i])
                .map(|j| {
                    let d: f64 = image(i)
                        .iter()
                        .zip(image(j))
                        .map(|(a, c)| (a - c).powi(2))
                        .sum();
                    (j, d)
                })
                .min_by(|a, c| a.1.total_cmp(&c.1));
            if let Some((j, _)) = nearest {
                source[i] = j as u32;
            }
        }
        let index = Tensor::from_vec(source.clone(), b, x0.device())?;
        let cand = x0.index_select(&index, 0)?;
        let adv = tracker.offer(&cand, &logits(ctx.model, &cand)?)?;
        let hit: Vec<bool> = (0..b)
            .map(|i| need[i] && source[i] as usize != i && adv[i])
            .collect();
        noise = row_mask(&hit, x0)?.where_cond(&cand, &noise)?;
        for i in 0..b {
            started[i] |= hit[i];
            need[i] &= !hit[i];
        }
    }

    // 2. Blend towards the clean image: the smallest misclassified blend, by bisection.
    let towards_noise = (&noise - x0)?;
    let (mut lo, mut hi) = (vec![0.0; b], vec![1.0; b]);
    for _ in 0..ctx.cfg.search_steps {
        let mid: Vec<f64> = (0..b)
            .map(|i| {
                if started[i] {
                    0.5 * (lo[i] + hi[i])
                } else {
                    0.0
                }
            })
            .collect();
        let cand =
            (x0 + towards_noise.broadcast_mul(&row_scalars(&mid, x0)?)?)?.clamp(0f64, 1f64)?;
        let adv = tracker.offer(&cand, &logits(ctx.model, &cand)?)?;
        for i in (0..b).filter(|&i| started[i]) {
            if adv[i] {
                hi[i] = mid[i];
            } else {
                lo[i] = mid[i];
            }
        }
    }

    // 3. The random walk along the boundary.
    let mut steps: Vec<Steps> = (0..b).map(|_| Steps::new()).collect();
    for _ in 0..ctx.cfg.steps {
        let active: Vec<bool> = (0..b)
            .map(|i| started[i] && steps[i].source >= SOURCE_STEP_CONVERGENCE)
            .collect();
        if !active.iter().any(|&a| a) {
            break;
        }
        let source = (x0 - &tracker.best)?;
        let source_norm = host_norms(&source, Norm::L2)?;
        let inv_norm: Vec<f64> = (0..b)
            .map(|i| {
                if active[i] && source_norm[i] > 0.0 {
                    1.0 / source_norm[i]
                } else {
                    0.0
                }
            })
            .collect();
        let unit = source.broadcast_mul(&row_scalars(&inv_norm, x0)?)?;
        // Gaussian noise with its component along the source direction removed.
        let eta = draw(&mut rngs, &active, &gaussian)?;
        let along = (&eta * &unit)?.flatten_from(1)?.sum(D::Minus1)?;
        let eta = (&eta - unit.broadcast_mul(&row_scalars(&super::host_vec(&along)?, x0)?)?)?;
        let eta_norm = host_norms(&eta, Norm::L2)?;
        let (mut eta_scale, mut inv_dist) = (vec![0.0; b], vec![1.0; b]);
        for i in (0..b).filter(|&i| active[i] && eta_norm[i] > 0.0) {
            eta_scale[i] = steps[i].spherical * source_norm[i] / eta_norm[i];
            inv_dist[i] = 1.0 / (steps[i].spherical.powi(2) + 1.0).sqrt();
        }
        // x0 + (x − x0 + η)/√(1 + s²): the orthogonal step, back on the sphere.
        let eta = eta.broadcast_mul(&row_scalars(&eta_scale, x0)?)?;
        let spherical = (x0 + (eta - &source)?.broadcast_mul(&row_scalars(&inv_dist, x0)?)?)?
            .clamp(0f64, 1f64)?;
        // Then a step of `source · distance` towards the clean image, corrected for the
        // deviation from the sphere that clipping caused.
        let new_source = (x0 - &spherical)?;
        let new_norm = host_norms(&new_source, Norm::L2)?;
        let length: Vec<f64> = (0..b)
            .map(|i| {
                if active[i] && new_norm[i] > 0.0 {
                    let l = steps[i].source * source_norm[i] + new_norm[i] - source_norm[i];
                    l.max(0.0) / new_norm[i]
                } else {
                    0.0
                }
            })
            .collect();
        let cand = (&spherical + new_source.broadcast_mul(&row_scalars(&length, x0)?)?)?
            .clamp(0f64, 1f64)?;
        // Two forward passes of the batch's size rather than one of twice the size: the
        // accepted points hug the boundary, and the final re-classification (also at the
        // batch's size) must see the same logits, which a different batch size need not
        // give on every device.
        let cand_adv = tracker.offer(&cand, &logits(ctx.model, &cand)?)?;
        let spherical_adv = tracker.offer(&spherical, &logits(ctx.model, &spherical)?)?;
        for i in (0..b).filter(|&i| active[i]) {
            steps[i].record(spherical_adv[i], cand_adv[i]);
        }
    }
    Ok(())
}
