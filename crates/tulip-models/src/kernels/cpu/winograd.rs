//! The 3×3 convolutions with padding 1 (every 3×3 layer of the models, and their input
//! gradients) by Winograd's F(2, 3) down the columns and the direct kernel along the
//! rows: two output rows from four input rows with 4 multiplies per kernel column
//! instead of 6, so 6 multiply-adds per output and input channel instead of 9.
//!
//! For output rows `2t` and `2t + 1`, column `s`, and one kernel column `j`, the 1-D
//! F(2, 3) (Lavin and Gray, *Fast Algorithms for Convolutional Neural Networks*, 2016)
//! with `d` the padded input rows `2t … 2t + 3` at column `s + j`:
//!
//! `[y₀, y₁] = Aᵀ [(G g) ⊙ (Bᵀ d)]`, `Bᵀ d = (d₀ − d₂, d₁ + d₂, d₂ − d₁, d₁ − d₃)`,
//! `G g = (g₀, (g₀ + g₁ + g₂)/2, (g₀ − g₁ + g₂)/2, g₂)`, `Aᵀ m = (m₀ + m₁ + m₂, m₁ − m₂ − m₃)`.
//!
//! Summed over kernel columns and input channels, each of the four products `mᵢ` is a
//! 1×3 convolution of the transformed rows `Vᵢ = (Bᵀ d)ᵢ` (one row per pair of output
//! rows, the padded width long) with the transformed weights `Uᵢ = (G g)ᵢ`: the direct
//! kernel's register tile over `Vᵢ` laid out like its padded-flat planes. Every transform
//! runs along rows, on whole vectors; nothing is gathered or shuffled. The weight
//! gradient reads the same identity for `g` ([`grad_weight`]) with the direct kernel's
//! dot products on the channels-last input. (The 2-D
//! F(2×2, 3×3), 4 multiplies per output, needs the columns split by parity, a shuffle the
//! compiler leaves scalar here, and was slower than the direct kernel.)
//!
//! Rounding: the input transform adds two inputs, the weights are transformed in f64,
//! and the output adds three products, so the result differs from the direct sum by a
//! few units in the last place (the kernel tests hold it to the direct kernel's
//! tolerance).

use pulp::Simd;

use super::direct_conv::{
    copy_row, pack_weights, plane_moments, AffineRelu, ConvGeometry, GradWeightDots, PaddedFlat,
    Tile,
};
use super::simd::{lanes, load, store, Lane};

/// Whether [`conv_images`] computes this convolution (a 3×3 kernel with padding 1) with
/// fewer multiply-adds than the direct kernel, for register tiles of `tile` positions.
/// Both compute whole tiles of padded rows: the direct kernel `H` rows of 9 taps, this one
/// `⌈H/2⌉` rows of 4 × 3, so small planes, where tiles round up a larger share, are left
/// to the direct kernel (7×7: the same count), with a tenth for the transforms.
pub(super) fn pays(g: &ConvGeometry, tile: usize) -> bool {
    let row = g.w + 2;
    let direct = (g.h * row).div_ceil(tile) * tile * 9;
    let winograd = (g.h.div_ceil(2) * row).div_ceil(tile) * tile * 12;
    fits(g) && 11 * winograd < 10 * direct
}

/// Whether this is a convolution these kernels compute: a 3×3 kernel with padding 1.
pub(super) fn fits(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.ph == 1 && g.pw == 1
}

/// Additions on vectors, as multiply-adds by ±1 (exact: `1·a + b` rounds once, like
/// `a + b`), the SIMD layer's one arithmetic operation.
#[derive(Clone, Copy)]
struct Adds<S: Simd, T: Lane> {
    simd: S,
    one: T::V<S>,
    minus_one: T::V<S>,
}

impl<S: Simd, T: Lane> Adds<S, T> {
    #[inline(always)]
    fn new(simd: S) -> Self {
        Self {
            simd,
            one: T::splat(simd, T::ONE),
            minus_one: T::splat(simd, -T::ONE),
        }
    }
    #[inline(always)]
    fn add(self, a: T::V<S>, b: T::V<S>) -> T::V<S> {
        T::mul_add(self.simd, self.one, a, b)
    }
    /// `a − b`.
    #[inline(always)]
    fn sub(self, a: T::V<S>, b: T::V<S>) -> T::V<S> {
        T::mul_add(self.simd, self.minus_one, b, a)
    }
}

/// The layout of one image's transformed rows.
#[derive(Debug, Clone, Copy)]
struct Rows {
    /// Padded row length `W + 2`.
    row: usize,
    /// Pairs of output rows `⌈H/2⌉`.
    pairs: usize,
    /// Output positions `pairs · row` (the last two of each row are garbage).
    positions: usize,
    /// `positions` rounded up to whole register tiles.
    stride: usize,
    /// One transformed plane: room for the tiles' reads two past `stride`, and for the
    /// transform's last vector.
    plane: usize,
}

impl Rows {
    fn new(g: &ConvGeometry, tile: usize, lanes: usize) -> Self {
        let row = g.w + 2;
        let pairs = g.h.div_ceil(2);
        let positions = pairs * row;
        let stride = positions.div_ceil(tile) * tile;
        Self {
            row,
            pairs,
            positions,
            stride,
            plane: stride + row + lanes,
        }
    }

    /// Length of the zero-padded input plane: rows `0 ..= 2·pairs + 1` (padded row `r + 1`
    /// holds input row `r`), and room for the transform's last vector.
    fn padded(&self, lanes: usize) -> usize {
        (2 * self.pairs + 2) * self.row + lanes
    }
}

/// `Uᵢ = (G g)ᵢ` of every kernel column of every `w[o, c]`, in f64: four `[O, C, 3]`.
fn transform_weights<T: Lane>(w: &[T], o: usize, c: usize) -> [Vec<T>; 4] {
    let mut u: [Vec<T>; 4] = std::array::from_fn(|_| Vec::with_capacity(o * c * 3));
    for k in w.chunks_exact(9) {
        for j in 0..3 {
            let (g0, g1, g2) = (k[j].widen(), k[3 + j].widen(), k[6 + j].widen());
            let gg = [g0, (g0 + g1 + g2) / 2.0, (g0 - g1 + g2) / 2.0, g2];
            for (u, &v) in u.iter_mut().zip(&gg) {
                u.push(T::rounded(v));
            }
        }
    }
    u
}

/// What the forward kernel is given for its job's images (see `ConvImages` in
/// [`super::direct_conv`]).
pub(super) struct Job<'a, T> {
    pub(super) x: &'a [T],
    pub(super) g: &'a ConvGeometry,
    pub(super) w: &'a [T],
    pub(super) o: usize,
    pub(super) epilogue: Option<AffineRelu<'a, T>>,
    pub(super) moments: bool,
    pub(super) out: &'a mut [T],
}

/// The convolution of the job's images (a 3×3 kernel, padding 1) with `OB × NV` register
/// tiles; the moments of each output plane if asked, image by image.
#[inline(always)]
pub(super) fn conv_images<S: Simd, T: Lane, const OB: usize, const NV: usize>(
    simd: S,
    job: Job<'_, T>,
) -> Vec<[f64; 3]> {
    let Job {
        x,
        g,
        w,
        o,
        epilogue,
        moments,
        out,
    } = job;
    let (c, h, wd) = (g.c, g.h, g.w);
    let n = lanes::<S, T>();
    let tile = NV * n;
    let rows = Rows::new(g, tile, n);
    let ops = Adds::<S, T>::new(simd);
    let images = out.len() / (o * h * wd).max(1);
    let packed = transform_weights(w, o, c).map(|u| pack_weights::<T, OB>(&u, o, c, 3));
    let mut xp = vec![T::ZERO; rows.padded(n)];
    // V₀ … V₃, each [C, plane].
    let mut v: [Vec<T>; 4] = std::array::from_fn(|_| vec![T::ZERO; c * rows.plane]);
    // The two output rows of each pair, [OB, stride] each.
    let mut even = vec![T::ZERO; OB * rows.stride];
    let mut odd = vec![T::ZERO; OB * rows.stride];
    let mut summaries = Vec::with_capacity(if moments { images * o } else { 0 });
    for (image, y) in out.chunks_exact_mut(o * h * wd).enumerate() {
        let xi = &x[image * c * h * wd..][..c * h * wd];
        for (ci, plane) in xi.chunks_exact(h * wd).enumerate() {
            for (r, line) in plane.chunks_exact(wd).enumerate() {
                copy_row(&mut xp[(r + 1) * rows.row + 1..][..wd], line);
            }
            transform_input(ops, &rows, &xp, &mut v, ci * rows.plane);
        }
        for block in 0..o.div_ceil(OB) {
            let weights = [0, 1, 2, 3].map(|i| &packed[i][block * c * 3 * OB..][..c * 3 * OB]);
            for p0 in (0..rows.positions).step_by(tile) {
                let mut m = [[[T::splat(simd, T::ZERO); NV]; OB]; 4];
                for ((m, v), wb) in m.iter_mut().zip(&v).zip(weights) {
                    *m = Tile {
                        xp: v,
                        wb,
                        plane: rows.plane,
                        p0,
                    }
                    .by_rows::<S, OB, NV, 3>(simd, &[0]);
                }
                // Aᵀ m: rows 2t and 2t + 1.
                let [m0, m1, m2, m3] = m;
                let products = m0.iter().zip(&m1).zip(&m2).zip(&m3);
                for (k, (((m0, m1), m2), m3)) in products.enumerate() {
                    let vectors = m0.iter().zip(m1).zip(m2).zip(m3);
                    for (l, (((&m0, &m1), &m2), &m3)) in vectors.enumerate() {
                        let at = k * rows.stride + p0 + l * n;
                        store::<S, T>(&mut even[at..], ops.add(ops.add(m0, m1), m2));
                        store::<S, T>(&mut odd[at..], ops.sub(ops.sub(m1, m2), m3));
                    }
                }
            }
            for k in 0..OB.min(o - block * OB) {
                let oo = block * OB + k;
                let channel = &mut y[oo * h * wd..][..h * wd];
                for (r, line) in channel.chunks_exact_mut(wd).enumerate() {
                    let pair = if r % 2 == 0 { &even } else { &odd };
                    let src = &pair[k * rows.stride + (r / 2) * rows.row..][..wd];
                    match &epilogue {
                        None => copy_row(line, src),
                        Some(e) => e.write(oo, ((image * o + oo) * h + r) * wd, line, src),
                    }
                }
                if moments {
                    summaries.push(plane_moments::<S, T>(simd, channel));
                }
            }
        }
    }
    summaries
}

/// `Vᵢ = (Bᵀ d)ᵢ` of one channel's padded plane `xp`, written at `at` of each `v[i]`:
/// row `t` of `Vᵢ` from padded rows `2t … 2t + 3`, the whole row in vectors (the last
/// one spills into the next row, which is written after it, or the plane's slack).
#[inline(always)]
fn transform_input<S: Simd, T: Lane>(
    ops: Adds<S, T>,
    rows: &Rows,
    xp: &[T],
    v: &mut [Vec<T>; 4],
    at: usize,
) {
    let n = lanes::<S, T>();
    let row = rows.row;
    for t in 0..rows.pairs {
        for s in (0..row).step_by(n) {
            let top = 2 * t * row + s;
            let d = [
                load::<S, T>(&xp[top..]),
                load::<S, T>(&xp[top + row..]),
                load::<S, T>(&xp[top + 2 * row..]),
                load::<S, T>(&xp[top + 3 * row..]),
            ];
            let values = [
                ops.sub(d[0], d[2]),
                ops.add(d[1], d[2]),
                ops.sub(d[2], d[1]),
                ops.sub(d[1], d[3]),
            ];
            for (v, value) in v.iter_mut().zip(values) {
                store::<S, T>(&mut v[at + t * row + s..], value);
            }
        }
    }
}

/// The weight gradient `[O, C, 3, 3]` of the images `x: [n, C, H, W]` with output
/// gradient `gr: [n, O, H, W]` (a 3×3 kernel, padding 1), `OB` output channels per
/// register tile, `xt` a scratch buffer.
///
/// The same identity read for the weights: with `∂m = A ∂y` (`∂m₀ = ∂y₀`,
/// `∂m₁ = ∂y₀ + ∂y₁`, `∂m₂ = ∂y₀ − ∂y₁`, `∂m₃ = −∂y₁` for the pair of output-gradient
/// rows `∂y₀, ∂y₁`), `∂Uᵢ = Σ ∂mᵢ ⋆ Vᵢ` is the weight gradient of a 1×3 convolution of
/// `Vᵢ`, which the direct kernel's dot products compute on the channels-last input (the
/// row transform runs there too, a channel vector at a time), and `∂g = Gᵀ ∂U` down each
/// kernel column: 6 multiply-adds per position, tap pair and channel pair instead of 9.
#[inline(always)]
pub(super) fn grad_weight<S: Simd, T: Lane, const OB: usize>(
    simd: S,
    x: &[T],
    g: &ConvGeometry,
    gr: &[T],
    o: usize,
    xt: &mut Vec<T>,
) -> Vec<T> {
    let (c, h, w) = (g.c, g.h, g.w);
    let n = lanes::<S, T>();
    let ops = Adds::<S, T>::new(simd);
    let flat = PaddedFlat::new(g, 1);
    let rows = Rows::new(g, 1, n);
    let cp = c.div_ceil(n) * n;
    let zero = T::splat(simd, T::ZERO);
    // ∂Uᵢ as [O, 3, Cp]; Vᵢ of one channel block, one vector per position; ∂mᵢ as
    // [O, pairs, W].
    let mut sums: [Vec<T>; 4] = Default::default();
    let mut v: [Vec<T::V<S>>; 4] = Default::default();
    let mut dm: [Vec<T>; 4] = Default::default();
    for ((sums, v), dm) in sums.iter_mut().zip(&mut v).zip(&mut dm) {
        *sums = vec![T::ZERO; o * 3 * cp];
        *v = vec![zero; rows.positions];
        *dm = vec![T::ZERO; o * rows.pairs * w];
    }
    xt.reserve(flat.plane * cp + 16);
    let offs = [0, 1, 2];
    for (xi, gi) in x.chunks_exact(c * h * w).zip(gr.chunks_exact(o * h * w)) {
        let lead = flat.pad_channel_blocks(g, xi, n, xt);
        spread_output_gradient(&rows, gi, h, w, &mut dm);
        let blocks = xt[lead..].chunks_exact(flat.plane * n);
        for (cb, block) in (0..cp).step_by(n).zip(blocks) {
            transform_channel_block(ops, &rows, bytemuck::cast_slice(block), h, &mut v);
            for ((sums, v), dm) in sums.iter_mut().zip(&v).zip(&dm) {
                let dots = GradWeightDots::<S, T, 3> {
                    xt: v,
                    row: rows.row,
                    ho: rows.pairs,
                    wo: w,
                    offs: &offs,
                    stride: cp,
                    first_tap: 0,
                };
                let plane = |k: usize| &dm[k * rows.pairs * w..][..rows.pairs * w];
                dots.accumulate_all::<OB>(simd, o, plane, |oo| oo * 3 * cp + cb, sums);
            }
        }
    }
    // ∂g = Gᵀ ∂U, [O, C, 3, 3], in f64.
    let mut out = Vec::with_capacity(o * c * 9);
    for oo in 0..o {
        for ci in 0..c {
            let mut columns = [[0.0; 3]; 3];
            for (j, column) in columns.iter_mut().enumerate() {
                let at = (oo * 3 + j) * cp + ci;
                let [a, b, c, d] = [0, 1, 2, 3].map(|i| sums[i][at].widen());
                *column = [a + (b + c) / 2.0, (b - c) / 2.0, (b + c) / 2.0 + d];
            }
            for r in 0..3 {
                out.extend(columns.iter().map(|column| T::rounded(column[r])));
            }
        }
    }
    out
}

/// `Vᵢ = (Bᵀ d)ᵢ` of one channel block of the channels-last padded image (`block`: one
/// vector of channels per position, `H + 2` padded rows and some slack), written to
/// `v[i]` (`pairs · row` positions). Padded row `H + 2`, which an odd `H` reaches, is zero.
#[inline(always)]
fn transform_channel_block<S: Simd, T: Lane>(
    ops: Adds<S, T>,
    rows: &Rows,
    block: &[T::V<S>],
    h: usize,
    v: &mut [Vec<T::V<S>>; 4],
) {
    let row = rows.row;
    let zero = T::splat(ops.simd, T::ZERO);
    for t in 0..rows.pairs {
        let last = 2 * t + 3 > h + 1;
        let top = &block[2 * t * row..][..3 * row];
        for q in 0..row {
            let d = [
                top[q],
                top[row + q],
                top[2 * row + q],
                if last {
                    zero
                } else {
                    block[(2 * t + 3) * row + q]
                },
            ];
            let at = t * row + q;
            v[0][at] = ops.sub(d[0], d[2]);
            v[1][at] = ops.add(d[1], d[2]);
            v[2][at] = ops.sub(d[2], d[1]);
            v[3][at] = ops.sub(d[1], d[3]);
        }
    }
}

/// `∂mᵢ = (A ∂y)ᵢ` of every pair of rows of one image's output gradient `gr: [O, H, W]`,
/// into `dm[i]: [O, pairs, W]` (the second row of the last pair of an odd `H` is zero).
#[inline(always)]
fn spread_output_gradient<T: Lane>(
    rows: &Rows,
    gr: &[T],
    h: usize,
    w: usize,
    dm: &mut [Vec<T>; 4],
) {
    let [dm0, dm1, dm2, dm3] = dm;
    for (k, plane) in gr.chunks_exact(h * w).enumerate() {
        for t in 0..rows.pairs {
            let at = (k * rows.pairs + t) * w;
            let first = &plane[2 * t * w..][..w];
            let (d0, d1, d2, d3) = (
                &mut dm0[at..][..w],
                &mut dm1[at..][..w],
                &mut dm2[at..][..w],
                &mut dm3[at..][..w],
            );
            if 2 * t + 1 < h {
                let second = &plane[2 * t * w + w..][..w];
                for s in 0..w {
                    let (e, o) = (first[s], second[s]);
                    d0[s] = e;
                    d1[s] = e + o;
                    d2[s] = e + -o;
                    d3[s] = -o;
                }
            } else {
                for s in 0..w {
                    d0[s] = first[s];
                    d1[s] = first[s];
                    d2[s] = first[s];
                    d3[s] = T::ZERO;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(c: usize, h: usize, w: usize, k: usize, p: usize) -> ConvGeometry {
        ConvGeometry {
            b: 1,
            c,
            h,
            w,
            kh: k,
            kw: k,
            ph: p,
            pw: p,
        }
    }

    #[test]
    fn it_takes_the_planes_where_it_saves_multiply_adds() {
        // Register tiles of 2 (scalar) to 32 (AVX-512, f32) positions.
        for tile in [2, 4, 8, 16, 32] {
            for (h, w) in [(32, 32), (28, 28), (16, 16), (14, 14), (10, 12), (5, 7)] {
                assert!(
                    pays(&geometry(16, h, w, 3, 1), tile),
                    "{h}×{w}, tile {tile}"
                );
            }
            assert!(!pays(&geometry(16, 8, 8, 1, 0), tile), "1×1, tile {tile}");
            assert!(
                !pays(&geometry(16, 8, 8, 3, 0), tile),
                "no padding, tile {tile}"
            );
            assert!(!pays(&geometry(16, 8, 8, 5, 2), tile), "5×5, tile {tile}");
        }
        // 7×7: four pairs of 9-wide rows (36 positions) round up to as many multiply-adds
        // as seven rows (63), or more.
        for tile in [16, 32] {
            assert!(!pays(&geometry(64, 7, 7, 3, 1), tile), "7×7, tile {tile}");
        }
    }
}
