//! Per-channel batch mean and variance, from the moments of each plane (taken by the
//! convolution as it writes its output, or by [`batch_statistics`] of any tensor).

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor, WithDType};

use super::direct_conv::moments_of;
use super::simd::Lane;
use super::storage::{batch_channels_positions, contiguous};
use super::threads::{map_indices, plane};

/// Per-channel batch mean and biased variance of an output, as [`batch_statistics`]
/// computes them.
pub(crate) type ChannelStatistics = (Vec<f64>, Vec<f64>);

/// Per channel the batch mean `μ` and biased variance of a `[B, C, sz]` tensor from its
/// planes' moments `[Σx, Σ(x − m)², m]` (`[B·C]`, image by image; `m` the plane's own mean,
/// see `direct_conv::plane_moments`), added in image order. A plane
/// centred on its own `m` contributes `Σ(x − μ)² = Σ(x − m)² + 2(m − μ)·Σ(x − m) +
/// sz·(m − μ)²` exactly, each term small where the data are (the variance stays accurate
/// when the mean is large).
pub(super) fn statistics_from_moments(
    moments: &[[f64; 3]],
    (b, c, sz): (usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(moments.len(), b * c, "one summary per plane");
    let n = (b * sz).max(1) as f64;
    let channel = |ci: usize| moments.iter().skip(ci).step_by(c.max(1));
    (0..c)
        .map(|ci| {
            let mean = channel(ci).map(|p| p[0]).sum::<f64>() / n;
            let squares = channel(ci).map(|&[sum, centred, m]| {
                let (off, sz) = (m - mean, sz as f64);
                centred + 2.0 * off * (sum - sz * m) + sz * off * off
            });
            (mean, squares.sum::<f64>() / n)
        })
        .unzip()
}

/// Per-channel batch mean and biased variance of `x: [B, C, …]` (from its planes'
/// moments, as a convolution takes them of its output, summed in f64), read straight from
/// its data: not recorded in any graph.
///
/// # Errors
/// Fails if `x` is not a floating-point CPU tensor of rank ≥ 2.
pub(crate) fn batch_statistics(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let (storage, layout) = x.storage_and_layout();
    match &*storage {
        Storage::Cpu(s @ CpuStorage::F32(_)) => statistics_cpu::<f32>(s, layout),
        Storage::Cpu(s @ CpuStorage::F64(_)) => statistics_cpu::<f64>(s, layout),
        _ => bail!("batch_statistics: f32 or f64 CPU tensors only"),
    }
}

fn statistics_cpu<T: WithDType + Lane>(s: &CpuStorage, l: &Layout) -> Result<(Vec<f64>, Vec<f64>)> {
    let (b, c, sz) = batch_channels_positions(l.dims())?;
    let x = contiguous::<T>(s, l)?;
    let moments = map_indices(b * c, |i| moments_of(plane(&x, sz, i)));
    Ok(statistics_from_moments(&moments, (b, c, sz)))
}
