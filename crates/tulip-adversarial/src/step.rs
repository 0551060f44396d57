//! The tensor steps that training perturbations and evaluation attacks share: per-image
//! scalars broadcast over a batch, and PGD's projected signed-gradient step in the L∞ ball.

use candle_core::Tensor;

use crate::Result;

/// `[B, 1, 1, …]` tensor of per-image scalars in the dtype and on the device of `like`, for
/// broadcasting against it.
pub(crate) fn row_scalars(v: &[f64], like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1usize; like.rank()];
    shape[0] = v.len();
    Ok(Tensor::from_vec(v.to_vec(), v.len(), like.device())?
        .to_dtype(like.dtype())?
        .reshape(shape)?)
}

/// One step of projected gradient ascent in L∞ balls: `x + α_i·sign(g)`, projected onto the
/// ball of radius `ε_i` around the clean image `x0` (entry by entry, between `x0 − ε_i` and
/// `x0 + ε_i`) and clipped to `[0, 1]`. For `x0` in `[0, 1]` this is the exact projection onto
/// the intersection of the ball and the box. An image with `α_i = 0` does not move (beyond
/// being projected).
///
/// The same step for PGD adversarial training (one `α` and `ε` for the whole batch) and for
/// the PGD and basic-iterative evaluation attacks (per image).
pub(crate) fn linf_ascent_step(
    x0: &Tensor,
    x: &Tensor,
    gradient: &Tensor,
    step: &[f64],
    radius: &[f64],
) -> Result<Tensor> {
    let step = row_scalars(step, x)?;
    let radius = row_scalars(radius, x0)?;
    let lower = x0.broadcast_sub(&radius)?;
    let upper = x0.broadcast_add(&radius)?;
    Ok(x.broadcast_add(&gradient.sign()?.broadcast_mul(&step)?)?
        .maximum(&lower)?
        .minimum(&upper)?
        .clamp(0f64, 1f64)?)
}
