//! Projected gradient ascent on the cross-entropy in an L2 or L∞ ball: the basic iterative
//! method searched over ε (minimum distance) and PGD at a fixed ε (robust accuracy).

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tulip_penalties::{input_gradient, steepest_ascent_direction, Norm};

use super::search::EpsSearch;
use super::{
    box_diameter, host_norms, logits, norm_not_attacked, row_scalars, step_clip, Ctx, Rows, Tracker,
};
use crate::step::linf_ascent_step;
use crate::Result;

/// Foolbox 1.x's basic-iterative defaults: ε = 0.3 and steps of 0.05, i.e. a step of 1/6 of
/// ε when ε is searched.
const BIM_RELATIVE_STEP: f64 = 0.05 / 0.3;

/// Growth factor of the iterative method's ε search (Foolbox's 1.5).
const BIM_GROWTH: f64 = 1.5;

/// The basic iterative method with a search over ε (growing ×1.5 from 0.3 — `0.3·√N` for
/// L2 — then bisecting). Each trial is a run of `steps` steps of size `step_size·ε` from the
/// clean image that stops at the first misclassified iterate (Foolbox's `return_early`);
/// the trial succeeds if one was.
pub(super) fn run_search(ctx: &Ctx<'_>, tracker: &mut Tracker) -> Result<()> {
    let norm = ctx.cfg.norm;
    let max_eps = box_diameter(norm, ctx.pixels());
    let start = ctx.cfg.epsilon.unwrap_or(0.3 * max_eps);
    let relative = ctx.cfg.step_size.unwrap_or(BIM_RELATIVE_STEP);
    let mut search = EpsSearch::new(
        &tracker.unfound(),
        start,
        BIM_GROWTH,
        max_eps,
        ctx.cfg.search_steps,
    );
    while !search.finished() {
        let eps = search.trials();
        let success = projected_run(ctx, tracker, &eps, relative, ctx.x0.clone())?;
        search.update(&success);
    }
    Ok(())
}

/// PGD at the fixed radius ε: `steps` steps of `step_size·ε` (default `2.5/steps`) from a
/// random point of the ball (or the clean image), stopping per image at the first
/// misclassified iterate. Success means misclassified within the ε-ball.
pub(super) fn run_pgd(ctx: &Ctx<'_>, tracker: &mut Tracker) -> Result<()> {
    let cfg = ctx.cfg;
    let epsilon = cfg.epsilon.unwrap_or(0.0);
    let relative = cfg.step_size.unwrap_or(2.5 / cfg.steps as f64);
    let eps: Vec<f64> = tracker
        .unfound()
        .iter()
        .map(|&u| if u { epsilon } else { 0.0 })
        .collect();
    let start = if cfg.random_start {
        random_start(ctx, &eps)?
    } else {
        ctx.x0.clone()
    };
    projected_run(ctx, tracker, &eps, relative, start)?;
    Ok(())
}

/// A uniform random point of each image's ball of radius `eps[i]` in the attack's norm,
/// clipped to `[0, 1]`; image `i` draws from ChaCha8 stream `i` of the seed.
fn random_start(ctx: &Ctx<'_>, eps: &[f64]) -> Result<Tensor> {
    let n = ctx.pixels();
    let mut noise = Vec::with_capacity(eps.len() * n);
    for (i, &e) in eps.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.cfg.seed);
        rng.set_stream(i as u64);
        match ctx.cfg.norm {
            Norm::L1 => return Err(norm_not_attacked(Norm::L1)),
            Norm::Linf => noise.extend((0..n).map(|_| e * rng.gen_range(-1.0..=1.0))),
            Norm::L2 => {
                // A Gaussian direction and radius ε·u^(1/n): uniform in the ball.
                let g: Vec<f64> = (0..n).map(|_| gaussian(&mut rng)).collect();
                let norm = g
                    .iter()
                    .map(|v| v * v)
                    .sum::<f64>()
                    .sqrt()
                    .max(f64::MIN_POSITIVE);
                let radius = e * rng.gen::<f64>().powf(1.0 / n as f64);
                noise.extend(g.iter().map(|v| v * radius / norm));
            }
        }
    }
    let noise =
        Tensor::from_vec(noise, ctx.x0.shape(), ctx.x0.device())?.to_dtype(ctx.x0.dtype())?;
    Ok((ctx.x0 + noise)?.clamp(0f64, 1f64)?)
}

/// A standard normal sample (Box–Muller), so no extra distribution crate is needed.
pub(super) fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // in (0, 1]
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Runs projected steps from `start` with per-image radius `eps[i]` (images with 0 do not
/// move) and step `relative·eps[i]`, offering every iterate to the tracker. An image stops
/// at its first misclassified iterate; returns which images had one.
///
/// Only the images still moving go through the model: once most are misclassified, a step
/// costs what is left of the batch (each image's iterates are the same as in a whole-batch
/// pass: evaluation mode treats images independently).
fn projected_run(
    ctx: &Ctx<'_>,
    tracker: &mut Tracker,
    eps: &[f64],
    relative: f64,
    start: Tensor,
) -> Result<Vec<bool>> {
    let norm = ctx.cfg.norm;
    let b = eps.len();
    let mut x = start;
    let mut success = vec![false; b];
    for step in 0..=ctx.cfg.steps {
        let last = step == ctx.cfg.steps;
        let moving: Vec<usize> = (0..b).filter(|&i| eps[i] > 0.0 && !success[i]).collect();
        if moving.is_empty() {
            break;
        }
        let rows = Rows::select(&moving, b, ctx.x0.device())?;
        let xs = rows.of(&x)?;
        let (z, g) = if last {
            (logits(ctx.model, &xs)?, None)
        } else {
            let pass = input_gradient(ctx.model, &xs, &rows.of(ctx.labels)?, false)?;
            (pass.logits, Some(pass.gradient))
        };
        let adv = tracker.offer_rows(&rows, &xs, &z)?;
        for (&i, &a) in moving.iter().zip(&adv) {
            success[i] |= a;
        }
        let Some(g) = g else { break };
        let scale: Vec<f64> = moving
            .iter()
            .zip(&adv)
            .map(|(&i, &a)| if a { 0.0 } else { relative * eps[i] })
            .collect();
        if scale.iter().all(|&s| s == 0.0) {
            break;
        }
        let x0s = rows.of(ctx.x0)?;
        let radius: Vec<f64> = moving.iter().map(|&i| eps[i]).collect();
        let stepped = match norm {
            Norm::Linf => linf_ascent_step(&x0s, &xs, &g, &scale, &radius)?,
            Norm::L2 => {
                let d = steepest_ascent_direction(&g, Norm::L2)?;
                project_l2(&x0s, &step_clip(&xs, &d, &scale)?, &radius)?
            }
            Norm::L1 => return Err(norm_not_attacked(Norm::L1)),
        };
        x = rows.put(&stepped, &x)?;
    }
    Ok(success)
}

/// The projection of `x` onto each image's L2 ball of radius `eps[i]` around `x0`, clipped
/// to `[0, 1]` (it stays inside the ball: clipping towards `x0 ∈ [0, 1]` only shortens).
fn project_l2(x0: &Tensor, x: &Tensor, eps: &[f64]) -> Result<Tensor> {
    let delta = (x - x0)?;
    let norms = host_norms(&delta, Norm::L2)?;
    let factor: Vec<f64> = norms
        .iter()
        .zip(eps)
        .map(|(&n, &e)| if n > e { e / n } else { 1.0 })
        .collect();
    let delta = delta.broadcast_mul(&row_scalars(&factor, x0)?)?;
    Ok((x0 + delta)?.clamp(0f64, 1f64)?)
}
