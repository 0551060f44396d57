//! DeepFool (Moosavi-Dezfooli et al. 2016), multi-class, L2 and L∞.

use candle_core::{Tensor, Var, D};
use tulip_models::grad_mode::frozen_parameters;

use super::{host_vec, logits, norm_not_attacked, step_clip, Ctx, Tracker};
use crate::Result;
use tulip_penalties::Norm;

/// Each step linearises every logit difference `f_k − f_y` (true label `y`) at the current
/// point, takes the class `k` whose linearised boundary is nearest —
/// `|f_k − f_y| / ‖∇f_k − ∇f_y‖_q` with `q` the dual norm (2 for L2, 1 for L∞) — and steps
/// `(1 + overshoot)` times onto it: `w·|f_k − f_y|/‖w‖₂²` (L2) or
/// `sign(w)·|f_k − f_y|/‖w‖₁` (L∞), `w = ∇f_k − ∇f_y`, clipped to `[0, 1]`, with the gap
/// `|f_k − f_y|` taken [`BOUNDARY_MARGIN`] larger. An image stops as soon as it is
/// misclassified, or after `steps` steps.
///
/// The overshoot multiplies each step, as in Foolbox 1.x (the original paper applies it
/// to the accumulated perturbation); on an affine model both give `(1 + overshoot)` times
/// the minimum distance, reached in one step. Every class is linearised (Foolbox
/// subsampled the 10 most likely). An image whose logit differences all have a zero
/// gradient cannot move and fails.
pub(super) fn run(ctx: &Ctx<'_>, tracker: &mut Tracker) -> Result<()> {
    let norm = ctx.cfg.norm;
    let factor = 1.0 + ctx.cfg.overshoot;
    let labels = ctx.labels.to_vec1::<u32>()?;
    let mut active = tracker.unfound();
    let mut x = ctx.x0.clone();
    for step in 0..=ctx.cfg.steps {
        if !active.iter().any(|&a| a) {
            break;
        }
        // One forward pass over the batch to record what the current points achieve...
        let adv = tracker.offer(&x, &logits(ctx.model, &x)?)?;
        for (a, hit) in active.iter_mut().zip(&adv) {
            *a &= !hit;
        }
        if step == ctx.cfg.steps || !active.iter().any(|&a| a) {
            break;
        }
        // ...and the K backward passes of the linearisation only over the images still
        // being attacked: after a few steps most are done, a few stragglers remain.
        let rows: Vec<u32> = (0..active.len() as u32)
            .filter(|&i| active[i as usize])
            .collect();
        let idx = Tensor::new(rows.as_slice(), x.device())?;
        let sub = x.index_select(&idx, 0)?;
        let sub_labels: Vec<u32> = rows.iter().map(|&i| labels[i as usize]).collect();
        let (d, scale) = linearised_step(ctx, &sub, &sub_labels, norm, factor)?;
        for (&i, s) in rows.iter().zip(&scale) {
            if s.is_none() {
                active[i as usize] = false; // nothing to follow: fails unless already found
            }
        }
        let scale: Vec<f64> = scale.into_iter().map(|s| s.unwrap_or(0.0)).collect();
        let moved = step_clip(&sub, &d, &scale)?;
        // Put the moved rows back; the others stay where they are.
        x = x.index_add(&idx, &(moved - &sub)?, 0)?;
    }
    Ok(())
}

/// How far past the linearised boundary, in logit units, each step aims (Foolbox 3's
/// choice).
pub const BOUNDARY_MARGIN: f64 = 1e-4;

/// One DeepFool step for the images `x` (true labels `labels`): the direction towards the
/// nearest linearised boundary and, per image, its length — `None` where every logit
/// difference has a zero gradient (the image cannot move).
fn linearised_step(
    ctx: &Ctx<'_>,
    x: &Tensor,
    labels: &[u32],
    norm: Norm,
    factor: f64,
) -> Result<(Tensor, Vec<Option<f64>>)> {
    let (b, n) = (labels.len(), ctx.pixels());
    let (z, jac) = logits_and_jacobian(ctx, x)?;
    let classes = z.dim(1)?;
    // w_k = ∇f_k − ∇f_y for every class k, [B, K, N].
    let idx_y = Tensor::new(labels, x.device())?
        .reshape((b, 1, 1))?
        .broadcast_as((b, 1, n))?
        .contiguous()?;
    let w = jac.broadcast_sub(&jac.gather(&idx_y, 1)?)?;
    let dual = match norm {
        Norm::L1 => return Err(norm_not_attacked(Norm::L1)),
        Norm::L2 => w.sqr()?.sum(D::Minus1)?.sqrt()?,
        Norm::Linf => w.abs()?.sum(D::Minus1)?,
    };
    let dual = host_vec(&dual)?;
    let zv = host_vec(&z)?;
    let mut target = vec![0u32; b];
    let mut scale = vec![None; b];
    for i in 0..b {
        let y = labels[i] as usize;
        let row = &zv[i * classes..(i + 1) * classes];
        let best = (0..classes)
            .filter(|&k| k != y && dual[i * classes + k] > 0.0)
            .map(|k| {
                let gap = (row[y] - row[k]).abs();
                (k, gap, gap / dual[i * classes + k])
            })
            .min_by(|a, b| a.2.total_cmp(&b.2));
        let Some((k, gap, _)) = best else { continue };
        // Aim 10⁻⁴ past the boundary, as Foolbox 3 does. Without a floor, a step that the
        // clip to [0, 1] shortens (on Fashion-MNIST most pixels are 0) leaves a fixed
        // fraction of the gap every time: the gap shrinks geometrically, reaches 0 — a tie,
        // which keeps the label — and the image fails although it is easily fooled. The
        // floor must exceed the rounding of f32 logits, so it is absolute, not relative.
        let gap = gap + BOUNDARY_MARGIN;
        let q = dual[i * classes + k];
        target[i] = k as u32;
        scale[i] = Some(
            factor
                * match norm {
                    Norm::L2 => gap / (q * q),
                    Norm::L1 | Norm::Linf => gap / q,
                },
        );
    }
    let idx_k = Tensor::from_vec(target, (b, 1, 1), x.device())?
        .broadcast_as((b, 1, n))?
        .contiguous()?;
    let wk = w.gather(&idx_k, 1)?.reshape(x.shape())?;
    let d = match norm {
        Norm::L2 => wk,
        Norm::L1 | Norm::Linf => wk.sign()?,
    };
    Ok((d, scale))
}

/// Logits `[B, K]` at `x` and the input gradients of every logit, `[B, K, N]` (row `i`,
/// class `k`: `∇_{x_i} f_k(x_i)`, exact per image in evaluation mode), detached: one forward
/// pass and `K` backward passes through it. Zero where a logit ignores the input.
fn logits_and_jacobian(ctx: &Ctx<'_>, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let b = x.dim(0)?;
    let n = ctx.pixels();
    let xv = Var::from_tensor(&x.detach())?;
    // Input gradients only: through the frozen view no parameter gradient is computed.
    let z = frozen_parameters(|| ctx.model.forward_t(xv.as_tensor(), false))?;
    let classes = z.dim(1)?;
    let mut rows = Vec::with_capacity(classes);
    for k in 0..classes {
        let grads = z.narrow(1, k, 1)?.sum_all()?.backward()?;
        let g = match grads.get(xv.as_tensor()) {
            Some(g) => g.detach().reshape((b, 1, n))?,
            None => Tensor::zeros((b, 1, n), x.dtype(), x.device())?,
        };
        rows.push(g);
    }
    Ok((z.detach(), Tensor::cat(&rows, 1)?))
}
