//! The 3×3 convolutions with padding 1 (every 3×3 layer of the models, and their input
//! gradients) by Winograd's F(m, 3) down the columns and the direct kernel along the
//! rows: `m` output rows from `m + 2` input rows with `m + 2` multiplies per kernel
//! column instead of `3m`. F(4, 3) takes 4.5 multiply-adds per output and input channel
//! instead of 9, F(2, 3) 6; [`plan`] picks the one with fewer after tile rounding.
//!
//! For output rows `2t` and `2t + 1`, column `s`, and one kernel column `j`, the 1-D
//! F(2, 3) (Lavin and Gray, *Fast Algorithms for Convolutional Neural Networks*, 2016)
//! with `d` the padded input rows `2t … 2t + 3` at column `s + j`:
//!
//! `[y₀, y₁] = Aᵀ [(G g) ⊙ (Bᵀ d)]`, `Bᵀ d = (d₀ − d₂, d₁ + d₂, d₂ − d₁, d₁ − d₃)`,
//! `G g = (g₀, (g₀ + g₁ + g₂)/2, (g₀ − g₁ + g₂)/2, g₂)`, `Aᵀ m = (m₀ + m₁ + m₂, m₁ − m₂ − m₃)`;
//! F(4, 3)'s matrices are at [`F4`].
//!
//! Summed over kernel columns and input channels, each of the products `mᵢ` is a 1×3
//! convolution of the transformed rows `Vᵢ = (Bᵀ d)ᵢ` (one row per group of output
//! rows, the padded width long) with the transformed weights `Uᵢ = (G g)ᵢ`: the direct
//! kernel's register tile over `Vᵢ` laid out like its padded-flat planes. Every transform
//! runs along rows, on whole vectors; nothing is gathered or shuffled. Small planes lie
//! end to end, a few images to each `Vᵢ`, so that their tiles are full: a tile that
//! crosses from one image into the next reads the next image's rows only for the two
//! garbage columns of a row, which are dropped ([`plan`]). The weight
//! gradient reads the F(2, 3) identity for `g` ([`grad_weight`]) with the direct kernel's
//! dot products on the channels-last input.
//!
//! Not taken: the 2-D F(2×2, 3×3), 4 multiplies per output. With the columns split by
//! parity per tile it needs a shuffle the compiler leaves scalar; with each padded plane
//! split once into its even and odd columns (every transform then on whole vectors) its
//! sixteen products are 1×1 convolutions, which reuse no input load across taps, over
//! sixteen transformed planes, and it was slower than F(2, 3) at every layer size.
//!
//! Rounding: the input transform adds two inputs (F(4, 3): up to three, with
//! coefficients up to 5), the weights are transformed in f64, and the output adds three
//! products (F(4, 3): up to five, coefficients up to 8), so the result differs from the
//! direct sum by a few units in the last place, F(4, 3)'s a few more (the kernel tests
//! hold each to its tolerance).

use pulp::Simd;

use super::direct_conv::{
    copy_row, pack_weights, plane_moments, AffineRelu, ConvGeometry, GradWeightDots, PaddedFlat,
    Tile, MAX_LEAD,
};
use super::simd::{lanes, load, store, Lane};

/// How the forward kernel computes a convolution: by F(`group`, 3), over the transformed
/// rows of `images` images at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    group: usize,
    images: usize,
}

/// The cheapest [`Plan`] of [`conv_images`] (a 3×3 kernel with padding 1) for register
/// tiles of `tile` positions of `lanes`-wide vectors of `T`, or `None` where the direct
/// kernel is cheaper. Every kernel computes whole tiles of padded rows: the direct kernel
/// `H` rows of 9 taps, F(m, 3) `⌈H/m⌉` rows of `(m + 2) × 3` (only the `W` real columns
/// of each where tiles divide `W`). Laying the rows of a few images end to end fills the
/// tiles that one small plane leaves part empty (8×8: 20 positions a plane under F(4, 3),
/// 5 tiles of 16 for 4 images instead of 8), as many as keep the transformed rows within
/// [`TRANSFORMED_BYTES`] and only where that saves a tenth. A tenth is allowed for the
/// transforms against the direct kernel, and F(4, 3) taken only where it saves
/// multiply-adds over F(2, 3), whose transforms are cheaper.
pub(super) fn plan<T>(g: &ConvGeometry, tile: usize, lanes: usize) -> Option<Plan> {
    if !fits(g) {
        return None;
    }
    // Multiply-adds for `images` images, and the plan.
    let mut best: Option<(usize, usize, Plan)> = None;
    for group in [2, 4] {
        let one = Rows::new(g, tile, lanes, Plan { group, images: 1 }).multiply_adds();
        let mut here = (one, 1, Plan { group, images: 1 });
        for images in 2..=MAX_IMAGES {
            let rows = Rows::new(g, tile, lanes, Plan { group, images });
            if rows.transformed_bytes::<T>(g.c) > TRANSFORMED_BYTES {
                break;
            }
            // More images only for a tenth fewer multiply-adds than one: the larger
            // transformed planes cost cache.
            let cost = rows.multiply_adds();
            if 10 * cost <= 9 * one * images && cost * here.1 < here.0 * images {
                here = (cost, images, Plan { group, images });
            }
        }
        if best.is_none_or(|(b, bi, _)| here.0 * bi < b * here.1) {
            best = Some(here);
        }
    }
    let (cost, images, plan) = best?;
    let direct = (g.h * (g.w + 2)).div_ceil(tile) * tile * 9;
    (11 * cost < 10 * direct * images).then_some(plan)
}

/// The most images whose transformed rows the forward kernel lays end to end.
const MAX_IMAGES: usize = 8;

/// Bytes of transformed rows the forward kernel keeps for more than one image at a time:
/// with the weights and output rows, within the second-level cache of 512 KiB of AVX2
/// CPUs such as Zen 3.
const TRANSFORMED_BYTES: usize = 320 * 1024;

/// Bytes of input and output gradient per batch of images of [`grad_weight`]: a quarter
/// of a second-level cache of 1 MiB.
const BATCH_BYTES: usize = 256 * 1024;

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
    /// `k·a + b`, for a small integer `k` (exact in any float type).
    #[inline(always)]
    fn scaled(self, k: f64, a: T::V<S>, b: T::V<S>) -> T::V<S> {
        T::mul_add(self.simd, T::splat(self.simd, T::rounded(k)), a, b)
    }
}

/// The layout of the transformed rows of a few images.
#[derive(Debug, Clone, Copy)]
struct Rows {
    /// Output rows per group: 2 for F(2, 3), 4 for F(4, 3).
    group: usize,
    /// Padded row length `W + 2`.
    row: usize,
    /// Groups of output rows `⌈H/group⌉`.
    groups: usize,
    /// Output positions of one image `groups · row` (the last two of each row are
    /// garbage): image `i`'s start at `i · positions`.
    positions: usize,
    /// Images laid end to end.
    images: usize,
    /// Register tiles per row where they divide the width (one image): the tiles then
    /// skip the garbage columns. 0 otherwise: tiles run over every position.
    row_tiles: usize,
    /// Positions per register tile.
    tile: usize,
    /// The images' positions rounded up to whole register tiles.
    stride: usize,
    /// One transformed plane: room for the tiles' reads two past `stride`, and for the
    /// transform's last vector.
    plane: usize,
}

impl Rows {
    fn new(g: &ConvGeometry, tile: usize, lanes: usize, plan: Plan) -> Self {
        let row = g.w + 2;
        let groups = g.h.div_ceil(plan.group);
        let positions = groups * row;
        let stride = (plan.images * positions).div_ceil(tile) * tile;
        let row_tiles = match plan.images == 1 && g.w.is_multiple_of(tile) {
            true => g.w / tile,
            false => 0,
        };
        Self {
            group: plan.group,
            row,
            groups,
            positions,
            images: plan.images,
            row_tiles,
            tile,
            stride,
            plane: stride + row + lanes,
        }
    }

    /// Multiply-adds per input and output channel of the forward kernel, for all its
    /// images: 3 per transformed plane (`group + 2` of them) and position of its tiles.
    fn multiply_adds(&self) -> usize {
        self.tiles(self.images) * self.tile * 3 * (self.group + 2)
    }

    /// Register tiles over the rows of `images` images.
    fn tiles(&self, images: usize) -> usize {
        match self.row_tiles {
            0 => (images * self.positions).div_ceil(self.tile),
            per_row => self.groups * per_row,
        }
    }

    /// The first position of register tile `i`.
    #[inline(always)]
    fn tile_start(&self, i: usize) -> usize {
        match self.row_tiles {
            0 => i * self.tile,
            per_row => i / per_row * self.row + i % per_row * self.tile,
        }
    }

    /// Bytes of the transformed planes of `c` channels.
    fn transformed_bytes<T>(&self, c: usize) -> usize {
        (self.group + 2) * c * self.plane * size_of::<T>()
    }
}

/// The one-dimensional transforms down the columns of F(m, 3): `m` output rows from
/// `m + 2` input rows, through `m + 2` products (arrays of 6 and 4, of which the first
/// `m + 2` and `m` count).
trait RowTransform {
    /// Output rows `m`.
    const ROWS: usize;
    /// `G g` of one kernel column `g`, in f64.
    fn weights(g: [f64; 3]) -> [f64; 6];
    /// `Bᵀ d` of `m + 2` input rows.
    fn input<S: Simd, T: Lane>(ops: Adds<S, T>, d: [T::V<S>; 6]) -> [T::V<S>; 6];
    /// `Aᵀ p` of the `m + 2` products.
    fn output<S: Simd, T: Lane>(ops: Adds<S, T>, p: [T::V<S>; 6]) -> [T::V<S>; 4];
}

/// F(2, 3), with the matrices of the module docs.
struct F2;

impl RowTransform for F2 {
    const ROWS: usize = 2;
    fn weights([g0, g1, g2]: [f64; 3]) -> [f64; 6] {
        [g0, (g0 + g1 + g2) / 2.0, (g0 - g1 + g2) / 2.0, g2, 0.0, 0.0]
    }
    #[inline(always)]
    fn input<S: Simd, T: Lane>(ops: Adds<S, T>, d: [T::V<S>; 6]) -> [T::V<S>; 6] {
        [
            ops.sub(d[0], d[2]),
            ops.add(d[1], d[2]),
            ops.sub(d[2], d[1]),
            ops.sub(d[1], d[3]),
            d[4],
            d[5],
        ]
    }
    #[inline(always)]
    fn output<S: Simd, T: Lane>(ops: Adds<S, T>, p: [T::V<S>; 6]) -> [T::V<S>; 4] {
        [
            ops.add(ops.add(p[0], p[1]), p[2]),
            ops.sub(ops.sub(p[1], p[2]), p[3]),
            p[4],
            p[5],
        ]
    }
}

/// F(4, 3) at the points 0, ±1, ±2 and ∞ (Lavin and Gray's matrices):
/// `Bᵀ d = (4d₀ − 5d₂ + d₄, −4d₁ − 4d₂ + d₃ + d₄, 4d₁ − 4d₂ − d₃ + d₄, −2d₁ − d₂ + 2d₃ + d₄,
/// 2d₁ − d₂ − 2d₃ + d₄, 4d₁ − 5d₃ + d₅)`,
/// `G g = (g₀/4, −(g₀ + g₁ + g₂)/6, −(g₀ − g₁ + g₂)/6, g₀/24 + g₁/12 + g₂/6,
/// g₀/24 − g₁/12 + g₂/6, g₂)`,
/// `Aᵀ p = (p₀ + p₁ + p₂ + p₃ + p₄, p₁ − p₂ + 2(p₃ − p₄), p₁ + p₂ + 4(p₃ + p₄),
/// p₁ − p₂ + 8(p₃ − p₄) + p₅)`.
/// 4.5 multiply-adds per output, kernel column and channel pair, against F(2, 3)'s 6; the
/// larger coefficients cost a few more units in the last place.
struct F4;

impl RowTransform for F4 {
    const ROWS: usize = 4;
    fn weights([g0, g1, g2]: [f64; 3]) -> [f64; 6] {
        [
            g0 / 4.0,
            -(g0 + g1 + g2) / 6.0,
            -(g0 - g1 + g2) / 6.0,
            g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
            g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
            g2,
        ]
    }
    #[inline(always)]
    fn input<S: Simd, T: Lane>(ops: Adds<S, T>, d: [T::V<S>; 6]) -> [T::V<S>; 6] {
        let t1 = ops.scaled(-4.0, d[2], d[4]);
        let t2 = ops.scaled(-4.0, d[1], d[3]);
        let t3 = ops.sub(d[4], d[2]);
        let t4 = ops.sub(d[3], d[1]);
        [
            ops.scaled(4.0, d[0], ops.scaled(-5.0, d[2], d[4])),
            ops.add(t1, t2),
            ops.sub(t1, t2),
            ops.scaled(2.0, t4, t3),
            ops.scaled(-2.0, t4, t3),
            ops.scaled(4.0, d[1], ops.scaled(-5.0, d[3], d[5])),
        ]
    }
    #[inline(always)]
    fn output<S: Simd, T: Lane>(ops: Adds<S, T>, p: [T::V<S>; 6]) -> [T::V<S>; 4] {
        let (s12, d12) = (ops.add(p[1], p[2]), ops.sub(p[1], p[2]));
        let (s34, d34) = (ops.add(p[3], p[4]), ops.sub(p[3], p[4]));
        [
            ops.add(ops.add(p[0], s12), s34),
            ops.scaled(2.0, d34, d12),
            ops.scaled(4.0, s34, s12),
            ops.add(ops.scaled(8.0, d34, d12), p[5]),
        ]
    }
}

/// `Uᵢ = (G g)ᵢ` of every kernel column of every `w[o, c]`, in f64: `m + 2` of `[O, C, 3]`.
fn transform_weights<T: Lane, R: RowTransform>(w: &[T], o: usize, c: usize) -> Vec<Vec<T>> {
    let mut u: Vec<Vec<T>> = (0..R::ROWS + 2)
        .map(|_| Vec::with_capacity(o * c * 3))
        .collect();
    for k in w.chunks_exact(9) {
        for j in 0..3 {
            let gg = R::weights([k[j].widen(), k[3 + j].widen(), k[6 + j].widen()]);
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

/// The convolution of the job's images (a 3×3 kernel, padding 1) by `plan` with
/// `OB × NV` register tiles; the moments of each output plane if asked, image by image.
#[inline(always)]
pub(super) fn conv_images<S: Simd, T: Lane, const OB: usize, const NV: usize>(
    simd: S,
    job: Job<'_, T>,
    plan: Plan,
) -> Vec<[f64; 3]> {
    match plan.group {
        4 => conv_images_by::<S, T, F4, OB, NV>(simd, job, plan),
        _ => conv_images_by::<S, T, F2, OB, NV>(simd, job, plan),
    }
}

/// [`conv_images`] by F(m, 3), `R` its transforms.
#[inline(always)]
fn conv_images_by<S: Simd, T: Lane, R: RowTransform, const OB: usize, const NV: usize>(
    simd: S,
    job: Job<'_, T>,
    plan: Plan,
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
    let planes = R::ROWS + 2;
    let rows = Rows::new(g, tile, n, plan);
    let ops = Adds::<S, T>::new(simd);
    let images = out.len() / (o * h * wd).max(1);
    let packed: Vec<Vec<T>> = transform_weights::<T, R>(w, o, c)
        .iter()
        .map(|u| pack_weights::<T, OB>(u, o, c, 3))
        .collect();
    // V₀ … V_(m+1), each [C, plane], the images' rows end to end in each plane.
    let mut v: Vec<Vec<T>> = (0..planes).map(|_| vec![T::ZERO; c * rows.plane]).collect();
    // The output rows of each group, [OB, stride] each.
    let mut ys: Vec<Vec<T>> = (0..R::ROWS)
        .map(|_| vec![T::ZERO; OB * rows.stride])
        .collect();
    let mut summaries = vec![[0.0; 3]; if moments { images * o } else { 0 }];
    for first in (0..images).step_by(rows.images) {
        let count = rows.images.min(images - first);
        for i in 0..count {
            let xi = &x[(first + i) * c * h * wd..][..c * h * wd];
            for (ci, plane) in xi.chunks_exact(h * wd).enumerate() {
                let at = ci * rows.plane + i * rows.positions;
                transform_input::<S, T, R>(ops, &rows, plane, wd, &mut v, at);
            }
        }
        for block in 0..o.div_ceil(OB) {
            for i in 0..rows.tiles(count) {
                let p0 = rows.tile_start(i);
                let mut m = [[[T::splat(simd, T::ZERO); NV]; OB]; 6];
                for ((m, v), u) in m.iter_mut().zip(&v).zip(&packed) {
                    *m = Tile {
                        xp: v,
                        wb: &u[block * c * 3 * OB..][..c * 3 * OB],
                        plane: rows.plane,
                        p0,
                    }
                    .by_rows::<S, OB, NV, 3>(simd, &[0]);
                }
                // Indexed: `m.map(…)` copied every product for each output and ran a
                // fifth slower.
                #[allow(clippy::needless_range_loop)]
                for k in 0..OB {
                    for l in 0..NV {
                        let p = [
                            m[0][k][l], m[1][k][l], m[2][k][l], m[3][k][l], m[4][k][l], m[5][k][l],
                        ];
                        let at = k * rows.stride + p0 + l * n;
                        for (y, value) in ys.iter_mut().zip(R::output(ops, p)) {
                            store::<S, T>(&mut y[at..], value);
                        }
                    }
                }
            }
            for k in 0..OB.min(o - block * OB) {
                let oo = block * OB + k;
                for i in 0..count {
                    let image = first + i;
                    let channel = &mut out[(image * o + oo) * h * wd..][..h * wd];
                    for (r, line) in channel.chunks_exact_mut(wd).enumerate() {
                        let at = k * rows.stride + i * rows.positions + (r / R::ROWS) * rows.row;
                        let src = &ys[r % R::ROWS][at..][..wd];
                        match &epilogue {
                            None => copy_row(line, src),
                            Some(e) => e.write(oo, ((image * o + oo) * h + r) * wd, line, src),
                        }
                    }
                    if moments {
                        summaries[image * o + oo] = plane_moments::<S, T>(simd, channel);
                    }
                }
            }
        }
    }
    summaries
}

/// `Vᵢ = (Bᵀ d)ᵢ` of one channel's plane `x: [H, W]`, written at `at` of each `v[i]`:
/// row `t` of `Vᵢ` from input rows `m·t − 1 … m·t + m` (zero past the edges), one column
/// to the right for the padding. The padding columns stay zero: never written, or written
/// with the transform of the zeros past a row's last, partial vector (which spills into
/// the next row, written after it, or the plane's slack).
#[inline(always)]
fn transform_input<S: Simd, T: Lane, R: RowTransform>(
    ops: Adds<S, T>,
    rows: &Rows,
    x: &[T],
    w: usize,
    v: &mut [Vec<T>],
    at: usize,
) {
    let n = lanes::<S, T>();
    let h = x.len() / w.max(1);
    let zero = T::splat(ops.simd, T::ZERO);
    let mut planes = v.iter_mut();
    let mut v: [&mut [T]; 6] = std::array::from_fn(|_| match planes.next() {
        Some(plane) => &mut plane[at..],
        None => &mut [],
    });
    for t in 0..rows.groups {
        let mut lines: [&[T]; 6] = [&[]; 6];
        for (k, line) in lines.iter_mut().enumerate().take(R::ROWS + 2) {
            if let Some(r) = (R::ROWS * t + k).checked_sub(1).filter(|&r| r < h) {
                *line = &x[r * w..][..w];
            }
        }
        let out = t * rows.row + 1;
        for s in (0..w).step_by(n) {
            let mut d = [zero; 6];
            for (d, line) in d.iter_mut().zip(&lines).take(R::ROWS + 2) {
                if s + n <= line.len() {
                    *d = load::<S, T>(&line[s..]);
                } else if !line.is_empty() {
                    *d = T::partial_load(ops.simd, &line[s..]);
                }
            }
            for (plane, value) in v.iter_mut().zip(R::input(ops, d)).take(R::ROWS + 2) {
                store::<S, T>(&mut plane[out + s..], value);
            }
        }
    }
}

/// The weight gradient `[O, C, 3, 3]` of the images `x: [n, C, H, W]` with output
/// gradient `gr: [n, O, H, W]` (a 3×3 kernel, padding 1), `OB` output channels per
/// register tile.
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
) -> Vec<T> {
    let (c, h, w) = (g.c, g.h, g.w);
    let n = lanes::<S, T>();
    let ops = Adds::<S, T>::new(simd);
    let flat = PaddedFlat::new(g, 1);
    let rows = Rows::new(
        g,
        1,
        n,
        Plan {
            group: 2,
            images: 1,
        },
    );
    let cp = c.div_ceil(n) * n;
    let zero = T::splat(simd, T::ZERO);
    let images = x.len() / (c * h * w).max(1);
    // Images a batch: as many as keep their inputs and output gradients in the
    // second-level cache, whose dot products then run on in registers from image to image.
    let per_image = (flat.plane * cp + MAX_LEAD + 4 * o * rows.groups * w) * size_of::<T>();
    let batch = (BATCH_BYTES / per_image.max(1)).clamp(1, images.max(1));
    // ∂Uᵢ as [O, 3, Cp]; per image of a batch: its channels-last padded input (from
    // `leads`), ∂mᵢ as [O, pairs, W], and Vᵢ of one channel block, a vector per position.
    let mut sums: [Vec<T>; 4] = std::array::from_fn(|_| vec![T::ZERO; o * 3 * cp]);
    let mut xts: Vec<Vec<T>> = (0..batch).map(|_| Vec::new()).collect();
    let mut leads = vec![0; batch];
    let plane_len = rows.groups * w;
    let mut dms: Vec<[Vec<T>; 4]> = (0..batch)
        .map(|_| std::array::from_fn(|_| vec![T::ZERO; o * plane_len]))
        .collect();
    let mut vs: Vec<[Vec<T::V<S>>; 4]> = (0..batch)
        .map(|_| std::array::from_fn(|_| vec![zero; rows.positions]))
        .collect();
    let offs = [0, 1, 2];
    for first in (0..images).step_by(batch) {
        let count = batch.min(images - first);
        for (i, image) in (first..first + count).enumerate() {
            let xi = &x[image * c * h * w..][..c * h * w];
            leads[i] = flat.pad_channel_blocks(g, xi, n, &mut xts[i]);
            spread_output_gradient(
                &rows,
                &gr[image * o * h * w..][..o * h * w],
                h,
                w,
                &mut dms[i],
            );
        }
        for cb in (0..cp).step_by(n) {
            for ((xt, &lead), v) in xts.iter().zip(&leads).zip(&mut vs).take(count) {
                let block = &xt[lead + cb * flat.plane..][..flat.plane * n];
                transform_channel_block(ops, &rows, bytemuck::cast_slice(block), h, v);
            }
            for (p, sums) in sums.iter_mut().enumerate() {
                let inputs: Vec<&[T::V<S>]> = vs[..count].iter().map(|v| &v[p][..]).collect();
                let dots = GradWeightDots::<S, T, 3> {
                    xts: &inputs,
                    row: rows.row,
                    ho: rows.groups,
                    wo: w,
                    offs: &offs,
                    stride: cp,
                    first_tap: 0,
                };
                let planes = |i: usize, k: usize| &dms[i][p][k * plane_len..][..plane_len];
                dots.accumulate_all::<OB>(simd, o, planes, |oo| oo * 3 * cp + cb, sums);
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
    for t in 0..rows.groups {
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
            let values = F2::input(ops, [d[0], d[1], d[2], d[3], zero, zero]);
            for (v, value) in v.iter_mut().zip(values) {
                v[at] = value;
            }
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
        for t in 0..rows.groups {
            let at = (k * rows.groups + t) * w;
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
        let f32_plan = |g: &ConvGeometry, tile: usize| plan::<f32>(g, tile, tile / 2);
        // Register tiles of 2 (scalar) to 32 (AVX-512, f32) positions.
        for tile in [2, 4, 8, 16, 32] {
            for (h, w) in [(32, 32), (28, 28), (16, 16), (14, 14), (10, 12), (5, 7)] {
                let g = geometry(16, h, w, 3, 1);
                assert!(f32_plan(&g, tile).is_some(), "{h}×{w}, tile {tile}");
            }
            for (g, what) in [
                (geometry(16, 8, 8, 1, 0), "1×1"),
                (geometry(16, 8, 8, 3, 0), "no padding"),
                (geometry(16, 8, 8, 5, 2), "5×5"),
            ] {
                assert_eq!(f32_plan(&g, tile), None, "{what}, tile {tile}");
            }
        }
        let f4 = |images| Some(Plan { group: 4, images });
        // F(4, 3) where it saves multiply-adds over F(2, 3) (32×32: 8 groups of 32
        // positions × 18, against 16 × 32 × 12), one image at a time, its rows in whole
        // tiles.
        for tile in [8, 16] {
            assert_eq!(f32_plan(&geometry(16, 32, 32, 3, 1), tile), f4(1));
        }
        // Rows in whole tiles, the garbage columns skipped: 16×16 in tiles of 16, 4 groups
        // of 16 positions (against 9 tiles for two images end to end).
        assert_eq!(f32_plan(&geometry(32, 16, 16, 3, 1), 16), f4(1));
        // Small planes, images end to end: 16×16 in tiles of 32, 4 groups of 18 positions
        // (72, 3 tiles) four times make 9 tiles; 8×8 in tiles of 16, 2 groups of 10 (20)
        // four times 5 tiles; 7×7, 2 groups of 9 (18) eight times 9 tiles.
        assert_eq!(f32_plan(&geometry(32, 16, 16, 3, 1), 32), f4(4));
        assert_eq!(f32_plan(&geometry(64, 8, 8, 3, 1), 16), f4(4));
        assert_eq!(f32_plan(&geometry(64, 7, 7, 3, 1), 16), f4(8));
        // As many as keep the transformed rows within bounds: 8×8 with 256 channels
        // takes one image (two would need 6 planes of 256 × 66 floats, 405 kB, by F(4, 3),
        // or 4 of 256 × 98, 401 kB, by F(2, 3)), and F(2, 3), as cheap as F(4, 3) alone.
        let f2_alone = Some(Plan {
            group: 2,
            images: 1,
        });
        assert_eq!(f32_plan(&geometry(256, 8, 8, 3, 1), 16), f2_alone);
    }
}
