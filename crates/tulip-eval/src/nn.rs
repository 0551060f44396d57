//! The nearest-different-label-neighbour "attack" (docs/method.md §5): for each query
//! image the L2 distance to the nearest reference image with another label.
//!
//! 10,000 × 60,000 distances of 784 pixels are a matrix product, so they are computed as
//! one: `‖a − b‖² = ‖a‖² + ‖b‖² − 2 a·b`, with the `a·b` of a block of queries against a
//! block of references a single Candle `f32` matmul (multi-threaded GEMM). Each block's
//! products are then scanned on the host (rows split over the CPU cores): pairs with the
//! same label are skipped (+∞), and each query keeps its smallest value and its argmin.
//!
//! The expanded form loses precision to cancellation in `f32` (about 1e-4 in the squared
//! distance at Fashion-MNIST magnitudes, so a duplicate could read as distance 0.01), which
//! would corrupt the data Lipschitz constant `1/min(d > 0)`. So the distance reported for
//! each query is recomputed *exactly* from the bytes of the chosen neighbour (an integer
//! sum of squared byte differences, divided by 255²): duplicates come out at exactly 0.
//! Only the choice of neighbour can differ from an exact search, between candidates
//! whose squared distances are within that rounding of each other.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tulip_data::Split;

use crate::{EvalError, Result};

/// Block sizes of [`nearest_different_label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NnOptions {
    /// Query images per block.
    pub query_block: usize,
    /// Reference images per block (the block product is `query_block × reference_block`
    /// `f32` values: 40 MB at the defaults).
    pub reference_block: usize,
}

impl Default for NnOptions {
    fn default() -> Self {
        Self {
            query_block: 1000,
            reference_block: 10_000,
        }
    }
}

/// The result of [`nearest_different_label`], one entry per query image.
#[derive(Debug, Clone, PartialEq)]
pub struct NearestNeighbours {
    /// Label of each query image.
    pub labels: Vec<u8>,
    /// L2 distance (pixels in `[0, 1]`) to the nearest reference image with another
    /// label; `+∞` if the reference set holds no other label.
    pub distances: Vec<f64>,
    /// Index (in the reference split) of that neighbour.
    pub neighbours: Vec<Option<usize>>,
}

/// Mean, median and the data's Lipschitz constant of nearest-neighbour distances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NnStats {
    /// Number of query images with a neighbour (finite distance).
    pub images: usize,
    /// Query images without any reference of another label (left out of the rest).
    pub without_neighbour: usize,
    /// Mean distance.
    pub mean: f64,
    /// Median distance (mean of the two middle values for an even count).
    pub median: f64,
    /// Query images at distance 0 (a duplicate image with another label).
    pub zero_distance: usize,
    /// Smallest positive distance.
    pub min_positive: Option<f64>,
    /// `1 / min(d > 0)`: how fast the true labelling changes, duplicates at distance 0
    /// skipped (docs/method.md §5).
    pub data_lipschitz: Option<f64>,
}

impl NearestNeighbours {
    /// Summary statistics over the finite distances.
    ///
    /// # Errors
    /// [`EvalError::InvalidInput`] when no query image has a neighbour (the reference
    /// images all carry the queries' one label): the mean and median would be NaN.
    pub fn stats(&self) -> Result<NnStats> {
        let mut d: Vec<f64> = self
            .distances
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        if d.is_empty() {
            return Err(EvalError::InvalidInput(format!(
                "none of the {} query images has a reference image with another label, so \
                 there is no distance to summarise",
                self.distances.len()
            )));
        }
        d.sort_by(f64::total_cmp);
        let n = d.len();
        let mean = d.iter().sum::<f64>() / n as f64;
        let median = if n % 2 == 1 {
            d[n / 2]
        } else {
            0.5 * (d[n / 2 - 1] + d[n / 2])
        };
        let min_positive = d.iter().copied().find(|&v| v > 0.0);
        Ok(NnStats {
            images: n,
            without_neighbour: self.distances.len() - n,
            mean,
            median,
            zero_distance: d.iter().filter(|&&v| v == 0.0).count(),
            min_positive,
            data_lipschitz: min_positive.map(|m| 1.0 / m),
        })
    }

    /// Writes `index,label,distance`, one query image per line, to `path`.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_csv(&self, path: &std::path::Path) -> Result<()> {
        let mut text = String::from("index,label,distance\n");
        for (i, (l, d)) in self.labels.iter().zip(&self.distances).enumerate() {
            text.push_str(&format!("{i},{l},{d}\n"));
        }
        crate::error::write_file(path, text.as_bytes())
    }
}

/// For every image of `queries`, the L2 distance to the nearest image of `reference`
/// with a different label (see the module docs for the method and its precision).
///
/// Train-against-train is `nearest_different_label(&train, &train, …)`: an image is never
/// its own neighbour, since it has its own label.
///
/// `progress(done, total)` is called after each block pair. Tensors are built on
/// `device`; the scan runs on the host.
///
/// # Errors
/// Splits of different image shapes, an empty split, a zero block size, or a failed
/// tensor operation (e.g. out of memory).
pub fn nearest_different_label(
    queries: &Split,
    reference: &Split,
    options: &NnOptions,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<NearestNeighbours> {
    if queries.shape != reference.shape {
        return Err(EvalError::InvalidInput(format!(
            "query images {:?} and reference images {:?} differ in shape",
            queries.shape, reference.shape
        )));
    }
    if queries.is_empty() || reference.is_empty() {
        return Err(EvalError::InvalidInput(
            "nearest neighbours of or among no images".into(),
        ));
    }
    if options.query_block == 0 || options.reference_block == 0 {
        return Err(EvalError::InvalidInput(
            "block sizes must be at least 1".into(),
        ));
    }
    let (nq, nr) = (queries.len(), reference.len());
    let q_all = to_tensor(queries, device)?;
    let r_all = to_tensor(reference, device)?;
    let r_norms = squared_norms(reference);

    // best[i]: smallest ‖r‖² − 2 q_i·r so far (‖q_i‖² is the same for every r).
    let mut best = vec![f32::INFINITY; nq];
    let mut arg: Vec<Option<usize>> = vec![None; nq];
    let q_blocks = nq.div_ceil(options.query_block);
    let r_blocks = nr.div_ceil(options.reference_block);
    let total = q_blocks * r_blocks;
    let mut done = 0;
    for qs in (0..nq).step_by(options.query_block) {
        let ql = options.query_block.min(nq - qs);
        let q = q_all.narrow(0, qs, ql)?;
        for rs in (0..nr).step_by(options.reference_block) {
            let rl = options.reference_block.min(nr - rs);
            let r = r_all.narrow(0, rs, rl)?;
            // [ql, dim] · [dim, rl]; the transposed view needs no copy.
            let dots: Vec<f32> = q.matmul(&r.t()?)?.flatten_all()?.to_vec1()?;
            scan_block(
                &dots,
                &queries.labels[qs..qs + ql],
                &reference.labels[rs..rs + rl],
                &r_norms[rs..rs + rl],
                rs,
                &mut best[qs..qs + ql],
                &mut arg[qs..qs + ql],
            );
            done += 1;
            progress(done, total);
        }
    }
    let distances = arg
        .iter()
        .enumerate()
        .map(|(i, a)| match a {
            Some(j) => exact_distance(queries.image(i), reference.image(*j)),
            None => f64::INFINITY,
        })
        .collect();
    Ok(NearestNeighbours {
        labels: queries.labels.clone(),
        distances,
        neighbours: arg,
    })
}

/// The images of `split` as an `f32 [N, C·H·W]` tensor in `[0, 1]`.
fn to_tensor(split: &Split, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = split.images.iter().map(|&b| f32::from(b) / 255.0).collect();
    Ok(Tensor::from_vec(
        v,
        (split.len(), split.image_len()),
        device,
    )?)
}

/// `‖r‖²` of each image (pixels in `[0, 1]`), exact in integers then rounded to `f32`.
fn squared_norms(split: &Split) -> Vec<f32> {
    (0..split.len())
        .map(|i| {
            let s: u64 = split.image(i).iter().map(|&b| u64::from(b).pow(2)).sum();
            (s as f64 / 65_025.0) as f32
        })
        .collect()
}

/// Exact L2 distance between two byte images scaled to `[0, 1]`.
fn exact_distance(a: &[u8], b: &[u8]) -> f64 {
    let s: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)).pow(2))
        .sum();
    (s as f64).sqrt() / 255.0
}

/// Updates the running minima of the block's query rows, in parallel over the cores
/// (the GEMM is parallel; without this the scan would be the serial part).
fn scan_block(
    dots: &[f32],
    q_labels: &[u8],
    r_labels: &[u8],
    r_norms: &[f32],
    r_offset: usize,
    best: &mut [f32],
    arg: &mut [Option<usize>],
) {
    let rl = r_labels.len();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(q_labels.len());
    let chunk = q_labels.len().div_ceil(threads.max(1));
    std::thread::scope(|s| {
        for ((best, arg), (q_labels, dots)) in best
            .chunks_mut(chunk)
            .zip(arg.chunks_mut(chunk))
            .zip(q_labels.chunks(chunk).zip(dots.chunks(chunk * rl)))
        {
            s.spawn(move || {
                for (i, &y) in q_labels.iter().enumerate() {
                    let row = &dots[i * rl..(i + 1) * rl];
                    let (mut m, mut a) = (best[i], None);
                    for (j, ((&d, &n), &l)) in row.iter().zip(r_norms).zip(r_labels).enumerate() {
                        let v = if l == y { f32::INFINITY } else { n - 2.0 * d };
                        if v < m {
                            m = v;
                            a = Some(j);
                        }
                    }
                    if let Some(j) = a {
                        best[i] = m;
                        arg[i] = Some(r_offset + j);
                    }
                }
            });
        }
    });
}
