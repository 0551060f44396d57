//! FGSM (L∞) and the single-step gradient attack (L2), each searched over ε.

use candle_core::Tensor;
use tulip_penalties::{input_gradient, steepest_ascent_direction, Norm};

use super::search::EpsSearch;
use super::{box_diameter, host_norms, logits, step_clip, Ctx, Tracker};
use crate::Result;

/// One gradient of the cross-entropy at the clean image gives the direction `d`
/// (`sign ∇ℓ` for FGSM, `∇ℓ/‖∇ℓ‖₂` for the gradient attack); the attack tries
/// `clip(x + ε d)` for ε from the search (growing ×2 from the start value, then bisection)
/// and keeps the closest misclassified one. As in Foolbox, only the model's predictions are
/// needed after the first gradient, so the search is cheap. An image whose gradient is
/// exactly zero cannot move and fails.
pub(super) fn run(ctx: &Ctx<'_>, tracker: &mut Tracker) -> Result<()> {
    let g = input_gradient(ctx.model, ctx.x0, ctx.labels, false)?.gradient;
    // The unit step of steepest ascent in the attack's norm is measured in its dual.
    let d: Tensor = steepest_ascent_direction(&g, ctx.cfg.norm.dual())?;
    let movable = host_norms(&d, Norm::Linf)?;
    let active: Vec<bool> = tracker
        .unfound()
        .into_iter()
        .zip(&movable)
        .map(|(u, &m)| u && m > 0.0)
        .collect();
    let max_eps = box_diameter(ctx.cfg.norm, ctx.pixels());
    let start = ctx.cfg.epsilon.unwrap_or(max_eps / 1000.0);
    let mut search = EpsSearch::new(&active, start, 2.0, max_eps, ctx.cfg.search_steps);
    while !search.finished() {
        let eps = search.trials();
        let x = step_clip(ctx.x0, &d, &eps)?;
        let adv = tracker.offer(&x, &logits(ctx.model, &x)?)?;
        search.update(&adv);
    }
    Ok(())
}
