//! Direct stride-1 convolution kernels with explicit SIMD, chosen at run time (AVX-512,
//! AVX2 or scalar, through `pulp`).
//!
//! The trick that makes a direct convolution simple is the *padded-flat* layout: each
//! input plane is zero-padded to `(H+2p) × (W+2p)` and read as one flat array. An output
//! computed at every flat position `q = r·Wp + col` (`Wp = W + 2p`) is then
//! `Σ_c Σ_taps w[o,c,i,j] · xp[c, q + i·Wp + j]`: every tap is a plain shift of the whole
//! array, so a tile of consecutive outputs reads consecutive inputs, whatever the row
//! boundaries. The `k − 1` columns past `Wo` in each row are garbage and are dropped when
//! the tile is copied out (`(k − 1)/Wo` extra work: 2/32 at 32×32, 2/8 at 8×8 for a 3×3
//! kernel).
//!
//! A tile is `OB` output channels × `NV` vectors of consecutive positions, all held in
//! registers while the kernel runs over every input channel and tap: one broadcast weight
//! and one fused multiply-add per accumulator, `NV` loads per tap. The `layers` bench
//! measures its rate (`cargo bench -p tulip-models --bench layers conv`); the figures,
//! against the im2col + GEMM it replaced, are in `bench/RESULTS.md`.
//!
//! 3×3 kernels with padding 1, every 3×3 layer of the models, go to [`winograd`] (the
//! forward kernel where it saves multiply-adds after tile rounding): it runs this file's
//! register tile and dot products over transformed rows.
//!
//! The weight gradient is the same sum read the other way round: with the output
//! gradient laid out padded-flat too (zeros in the garbage columns),
//! `∂w[o,c,t] = Σ_b Σ_q g[b,o,q] · xp[b,c,q + off_t]`, accumulated as `OB × taps` vector
//! dot products.

use candle_core::{bail, Result};
use pulp::{Simd, WithSimd};

use super::relu::relu_value;
use super::simd::{lane_total, lanes, load, registers, store, Isa, Lane};
use super::threads::{on_threads, threads, vec_on_threads};
use super::winograd;

/// The shape of a stride-1 convolution: `b` images of `c × h × w`, a `kh × kw` kernel,
/// zero padding `(ph, pw)` on each side.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvGeometry {
    pub(super) b: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
}

impl ConvGeometry {
    pub(super) fn ho(&self) -> usize {
        self.h + 2 * self.ph + 1 - self.kh
    }
    pub(super) fn wo(&self) -> usize {
        self.w + 2 * self.pw + 1 - self.kw
    }
    pub(super) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// The geometry of `conv(x, w)` for `x: [B, C, H, W]`, `w: [O, C, kh, kw]` and
    /// padding `p` on every side, and `O`; an error naming `what` if they do not fit.
    pub(super) fn of_forward(
        x: &[usize],
        w: &[usize],
        p: usize,
        what: &str,
    ) -> Result<(Self, usize)> {
        if x.len() != 4
            || w.len() != 4
            || x[1] != w[1]
            || x[2] + 2 * p < w[2]
            || x[3] + 2 * p < w[3]
        {
            bail!("{what}: input {x:?} and kernel {w:?} do not match (padding {p})");
        }
        let geometry = Self {
            b: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            kh: w[2],
            kw: w[3],
            ph: p,
            pw: p,
        };
        Ok((geometry, w[0]))
    }
}

/// Most elements [`PaddedFlat::pad_channel_blocks`] skips to align its output.
pub(super) const MAX_LEAD: usize = 16;

/// The padded-flat geometry of one image.
#[derive(Debug, Clone, Copy)]
pub(super) struct PaddedFlat {
    /// Padded row length `W + 2p`.
    row: usize,
    /// Padded plane size, plus slack so that the last tile's reads stay in bounds.
    pub(super) plane: usize,
    /// Output positions `Ho · row` (garbage columns included).
    positions: usize,
}

impl PaddedFlat {
    pub(super) fn new(g: &ConvGeometry, tile: usize) -> Self {
        let row = g.w + 2 * g.pw;
        let positions = g.ho() * row;
        // Every plane gets room for the last tile's reads: it starts below `positions` and
        // reads `tile` elements at offsets up to `(kh-1)·row + kw-1`. (This is at least
        // the padded plane `(Ho + kh - 1)·row`.)
        let plane = positions.div_ceil(tile) * tile + (g.kh - 1) * row + g.kw;
        Self {
            row,
            plane,
            positions,
        }
    }

    /// Offsets of the taps `(i, j)`, row-major.
    fn taps(&self, g: &ConvGeometry) -> Vec<usize> {
        (0..g.kh)
            .flat_map(|i| (0..g.kw).map(move |j| i * self.row + j))
            .collect()
    }

    /// Positions rounded up to whole tiles: the length of a flat output plane.
    fn stride(&self, tile: usize) -> usize {
        self.positions.div_ceil(tile) * tile
    }

    /// Writes the image `src: [C, H, W]` zero-padded, in blocks of `n` channels, to `out`
    /// after `lead` elements, returned, that align it to 64 bytes (a cache line): block `b`
    /// is `[plane, n]`, position `q` of the padded plane holding channels `b·n ..` `+ n`
    /// (zeros past `C`). A block is then a slice of whole vectors, one per position, and
    /// the weight gradient's loads never straddle two cache lines.
    ///
    /// The zeros (padding, channels past `C`) are written when `out` takes this length
    /// and never written after, so `out` must be new or last filled by this function for
    /// the same geometry and `n` (the images of one call): zeroing the whole buffer for
    /// every image cost more than the scatter itself.
    pub(super) fn pad_channel_blocks<T: Lane>(
        &self,
        g: &ConvGeometry,
        src: &[T],
        n: usize,
        out: &mut Vec<T>,
    ) -> usize {
        let len = g.c.div_ceil(n) * self.plane * n;
        if out.capacity() < len + MAX_LEAD {
            out.clear();
            out.reserve_exact(len + MAX_LEAD);
        }
        // The allocation stays where it is from here on.
        let lead = out.as_ptr().align_offset(64).min(MAX_LEAD);
        if out.len() != lead + len {
            out.clear();
            out.resize(lead + len, T::ZERO);
        }
        let hw = g.h * g.w;
        let blocks = out[lead..].chunks_exact_mut(self.plane * n);
        for (c0, block) in (0..g.c).step_by(n).zip(blocks) {
            // Row by row, each channel's row read in order and written to every `n`-th
            // element: a padded row of the block is a few kB and stays in L1. (Gathering
            // `n` channels per position instead, with `extend`, was much slower.)
            for r in 0..g.h {
                let at = ((g.ph + r) * self.row + g.pw) * n;
                let dst = &mut block[at..][..g.w * n];
                for k in 0..n.min(g.c - c0) {
                    let line = &src[(c0 + k) * hw + r * g.w..][..g.w];
                    for (position, &v) in dst.chunks_exact_mut(n).zip(line) {
                        position[k] = v;
                    }
                }
            }
        }
        lead
    }

    /// A buffer for [`PaddedFlat::copy_rows`]: `C` padded planes of zeros.
    fn zeroed<T: Lane>(&self, g: &ConvGeometry) -> Vec<T> {
        vec![T::ZERO; g.c * self.plane]
    }

    /// Copies the rows of the planes `src: [C, H, W]` into their places in `out`, a
    /// [`PaddedFlat::zeroed`] buffer: the padding is never written, so it stays zero from one
    /// image to the next.
    fn copy_rows<T: Lane>(&self, g: &ConvGeometry, src: &[T], out: &mut [T]) {
        let planes = src
            .chunks_exact(g.h * g.w)
            .zip(out.chunks_exact_mut(self.plane));
        for (plane, dst) in planes {
            for (r, line) in plane.chunks_exact(g.w).enumerate() {
                let at = (g.ph + r) * self.row + g.pw;
                copy_row(&mut dst[at..at + g.w], line);
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short rows of an image plane, in blocks of 8 so that
/// the compiler emits vector moves: `copy_from_slice` calls `memcpy`, and a step made
/// millions of those calls for rows of 8 to 32 values (with as many `memset`s for the
/// zero padding).
#[inline(always)]
pub(super) fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "copy_row: lengths differ");
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let d: &mut [T; 8] = d.try_into().expect("a block of 8");
        *d = *<&[T; 8]>::try_from(s).expect("a block of 8");
    }
    for (d, &s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = s;
    }
}

/// How a convolution is computed: [`Algorithm::Fastest`] takes [`winograd`] for 3×3
/// kernels with padding 1 (the forward kernel where it saves multiply-adds, the weight
/// gradient always) and the direct kernel elsewhere; [`Algorithm::Direct`] always the
/// direct kernel (the tests compare the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    Fastest,
    #[cfg(test)]
    Direct,
}

impl Algorithm {
    /// How [`winograd`] computes this convolution, for register tiles of `tile` positions
    /// of `lanes`-wide vectors of `T`, or `None` where it goes to the direct kernel.
    fn winograd<T>(self, g: &ConvGeometry, tile: usize, lanes: usize) -> Option<winograd::Plan> {
        (self == Algorithm::Fastest)
            .then(|| winograd::plan::<T>(g, tile, lanes))
            .flatten()
    }
}

/// Images per thread when `b` images are shared among the threads.
fn images_per_thread(b: usize) -> usize {
    b.div_ceil(threads().min(b).max(1)).max(1)
}

/// `y[b, o] = Σ_c w[o, c] ⋆ x[b, c]` for `x: [B, C, H, W]`, `w: [O, C, kh, kw]`,
/// zero padding `(ph, pw)`: `[B, O, Ho, Wo]`.
pub(super) fn conv<T: Lane>(isa: Isa, x: &[T], g: &ConvGeometry, w: &[T], o: usize) -> Vec<T> {
    conv_then(isa, x, g, w, o, None, false).0
}

/// One plane's share of its channel's batch statistics, `[Σx, Σ(x − m)², m]` with `m` the
/// plane's own mean rounded to `T`, with vectors (four accumulators each), summed in f64.
/// [`conv_then`] takes them of each output plane as it writes it, while the plane is in
/// cache; [`moments_of`] of a plane no convolution wrote.
#[inline(always)]
pub(super) fn plane_moments<S: Simd, T: Lane>(simd: S, plane: &[T]) -> [f64; 3] {
    let n = lanes::<S, T>();
    let one = T::splat(simd, T::ONE);
    let blocks = plane.chunks_exact(4 * n);
    let rest = blocks.remainder();
    // Sums: 1·x + acc, an exact add.
    let mut acc = [T::splat(simd, T::ZERO); 4];
    for block in blocks.clone() {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = T::mul_add(simd, one, load::<S, T>(&block[k * n..]), *a);
        }
    }
    let sum = lane_total::<S, T>(simd, acc) + rest.iter().map(|v| v.widen()).sum::<f64>();
    let m = T::rounded(sum / plane.len().max(1) as f64);
    // Centred squares: d = 1·x − m, then d·d + acc.
    let minus_m = T::splat(simd, -m);
    let mut acc = [T::splat(simd, T::ZERO); 4];
    for block in blocks {
        for (k, a) in acc.iter_mut().enumerate() {
            let d = T::mul_add(simd, one, load::<S, T>(&block[k * n..]), minus_m);
            *a = T::mul_add(simd, d, d, *a);
        }
    }
    let rest_squares: f64 = rest
        .iter()
        .map(|&v| {
            let d = v + -m;
            (d * d).widen()
        })
        .sum();
    [sum, lane_total::<S, T>(simd, acc) + rest_squares, m.widen()]
}

/// [`plane_moments`] of `plane`, on the best instruction set.
pub(super) fn moments_of<T: Lane>(plane: &[T]) -> [f64; 3] {
    struct Moments<'a, T>(&'a [T]);
    impl<T: Lane> WithSimd for Moments<'_, T> {
        type Output = [f64; 3];
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) -> [f64; 3] {
            plane_moments::<S, T>(simd, self.0)
        }
    }
    Isa::Chosen.dispatch(Moments(plane))
}

/// What [`conv_then`] applies to each output channel as it writes it:
/// `y = relu(v·scale[o] + shift[o] + skip)`, an evaluation-mode batch norm, the residual
/// connection (if any) and a ReLU.
#[derive(Clone, Copy)]
pub(super) struct AffineRelu<'a, T> {
    pub(super) scale: &'a [T],
    pub(super) shift: &'a [T],
    /// `[B, O, Ho, Wo]`, added before the ReLU.
    pub(super) skip: Option<&'a [T]>,
}

impl<T: Lane> AffineRelu<'_, T> {
    /// Writes `relu(v·scale[o] + shift[o] + skip)` to `dst`, for `skip` the residual's
    /// values at `dst`'s place (`at`: its offset in the output).
    #[inline(always)]
    pub(super) fn write(&self, o: usize, at: usize, dst: &mut [T], v: &[T]) {
        let (a, s) = (self.scale[o], self.shift[o]);
        match self.skip {
            None => {
                for (d, &v) in dst.iter_mut().zip(v) {
                    *d = relu_value(v * a + s, T::ZERO);
                }
            }
            Some(skip) => {
                let skip = &skip[at..][..dst.len()];
                for ((d, &v), &r) in dst.iter_mut().zip(v).zip(skip) {
                    *d = relu_value(v * a + s + r, T::ZERO);
                }
            }
        }
    }
}

/// [`conv`], each output then mapped through `epilogue` in the same pass, and with the
/// [`plane_moments`] of each output plane if `moments` (`[B·O]`, image by image; empty
/// otherwise).
pub(super) fn conv_then<T: Lane>(
    isa: Isa,
    x: &[T],
    g: &ConvGeometry,
    w: &[T],
    o: usize,
    epilogue: Option<AffineRelu<'_, T>>,
    moments: bool,
) -> (Vec<T>, Vec<[f64; 3]>) {
    conv_by(Algorithm::Fastest, isa, x, g, w, o, epilogue, moments)
}

/// [`conv_then`] by the given algorithm.
#[allow(clippy::too_many_arguments)]
fn conv_by<T: Lane>(
    algorithm: Algorithm,
    isa: Isa,
    x: &[T],
    g: &ConvGeometry,
    w: &[T],
    o: usize,
    epilogue: Option<AffineRelu<'_, T>>,
    moments: bool,
) -> (Vec<T>, Vec<[f64; 3]>) {
    let per_image = o * g.ho() * g.wo();
    let per_thread = images_per_thread(g.b);
    let (out, summaries) = vec_on_threads(
        g.b * per_image,
        per_thread * per_image,
        T::ZERO,
        |t, part| {
            let b0 = t * per_thread;
            // This job's images of the residual.
            let epilogue = epilogue.map(|e| AffineRelu {
                skip: e.skip.map(|r| &r[b0 * per_image..]),
                ..e
            });
            isa.dispatch(ConvImages {
                algorithm,
                x: &x[b0 * g.c * g.h * g.w..],
                g,
                w,
                o,
                epilogue,
                moments,
                out: part,
            })
        },
    );
    (out, summaries.into_iter().flatten().collect())
}

struct ConvImages<'a, T> {
    algorithm: Algorithm,
    /// The first of this job's images.
    x: &'a [T],
    g: &'a ConvGeometry,
    w: &'a [T],
    o: usize,
    /// Its `skip` starting at this job's first image.
    epilogue: Option<AffineRelu<'a, T>>,
    /// Whether to take each output plane's [`plane_moments`].
    moments: bool,
    /// `[n, O, Ho, Wo]` for this job's `n` images.
    out: &'a mut [T],
}

impl<T: Lane> WithSimd for ConvImages<'_, T> {
    /// The summaries of the job's output planes, image by image.
    type Output = Vec<[f64; 3]>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Vec<[f64; 3]> {
        // 8 × 2 accumulators fill AVX-512's 32 registers well. With 16 registers (AVX2),
        // or few output channels, 4 × 2: 4 × 3, 3 × 3, 2 × 4, 5 × 2 and 6 × 2 were all
        // slower (the first spills; `bench/RESULTS.md` has the measurements).
        if self.o > 4 && registers::<S, T>() >= 32 {
            self.run::<S, 8, 2>(simd)
        } else {
            self.run::<S, 4, 2>(simd)
        }
    }
}

impl<T: Lane> ConvImages<'_, T> {
    #[inline(always)]
    fn run<S: Simd, const OB: usize, const NV: usize>(self, simd: S) -> Vec<[f64; 3]> {
        let Self {
            algorithm,
            x,
            g,
            w,
            o,
            epilogue,
            moments,
            out,
        } = self;
        let n = lanes::<S, T>();
        if let Some(plan) = algorithm.winograd::<T>(g, NV * n, n) {
            let job = winograd::Job {
                x,
                g,
                w,
                o,
                epilogue,
                moments,
                out,
            };
            return winograd::conv_images::<S, T, OB, NV>(simd, job, plan);
        }
        let planes = out.len() / (g.ho() * g.wo()).max(1);
        let mut summaries = Vec::with_capacity(if moments { planes } else { 0 });
        let tile = NV * lanes::<S, T>();
        let flat = PaddedFlat::new(g, tile);
        let taps = flat.taps(g);
        let rows: Vec<usize> = (0..g.kh).map(|i| i * flat.row).collect();
        let packed = pack_weights::<T, OB>(w, o, g.c, taps.len());
        let hw = g.h * g.w;
        if g.kh * g.kw == 1 && g.ph + g.pw == 0 && hw % tile == 0 {
            // A 1×1 kernel without padding reads the image's planes unpadded and writes
            // whole tiles of output: no garbage columns to skip. The planes are copied a
            // cache line apart: at 32×32 a plane is 4 kB, and a tile's channel rows would
            // all fall into one set of the first-level cache.
            let mut sums = vec![T::ZERO; tile];
            let plane = hw + 64 / size_of::<T>();
            let mut xi = vec![T::ZERO; g.c * plane];
            for (image, y) in out.chunks_exact_mut(o * hw).enumerate() {
                let src = &x[image * g.c * hw..][..g.c * hw];
                for (dst, src) in xi.chunks_exact_mut(plane).zip(src.chunks_exact(hw)) {
                    dst[..hw].copy_from_slice(src);
                }
                for (block, wb) in packed.chunks_exact(g.c * OB).enumerate() {
                    for p0 in (0..hw).step_by(tile) {
                        let tile = Tile {
                            xp: &xi,
                            wb,
                            plane,
                            p0,
                        };
                        let acc = tile.by_rows::<S, OB, NV, 1>(simd, &[0]);
                        for (k, acc) in acc.iter().enumerate().take(o - block * OB) {
                            let oo = block * OB + k;
                            let at = oo * hw + p0;
                            let dst = &mut y[at..][..NV * lanes::<S, T>()];
                            match &epilogue {
                                None => {
                                    for (v, &a) in acc.iter().enumerate() {
                                        store::<S, T>(&mut dst[v * lanes::<S, T>()..], a);
                                    }
                                }
                                Some(e) => {
                                    for (v, &a) in acc.iter().enumerate() {
                                        store::<S, T>(&mut sums[v * lanes::<S, T>()..], a);
                                    }
                                    e.write(oo, image * o * hw + at, dst, &sums);
                                }
                            }
                        }
                    }
                    if moments {
                        for oo in block * OB..o.min(block * OB + OB) {
                            summaries.push(plane_moments::<S, T>(simd, &y[oo * hw..][..hw]));
                        }
                    }
                }
            }
            return summaries;
        }
        let stride = flat.stride(tile);
        let (ho, wo) = (g.ho(), g.wo());
        let mut xp = flat.zeroed(g);
        let mut tiles = vec![T::ZERO; OB * stride];
        for (image, y) in out.chunks_exact_mut(o * ho * wo).enumerate() {
            flat.copy_rows(g, &x[image * g.c * g.h * g.w..][..g.c * g.h * g.w], &mut xp);
            for (block, wb) in packed.chunks_exact(g.c * taps.len() * OB).enumerate() {
                for p0 in (0..flat.positions).step_by(tile) {
                    let tile = Tile {
                        xp: &xp,
                        wb,
                        plane: flat.plane,
                        p0,
                    };
                    // The common widths with the kernel width a constant, so that the
                    // inner loop's reads need no bounds checks.
                    let acc = match g.kw {
                        3 => tile.by_rows::<S, OB, NV, 3>(simd, &rows),
                        1 => tile.by_rows::<S, OB, NV, 1>(simd, &rows),
                        _ => tile.by_taps::<S, OB, NV>(simd, &taps),
                    };
                    for (k, acc) in acc.iter().enumerate() {
                        for (v, &a) in acc.iter().enumerate() {
                            store::<S, T>(&mut tiles[k * stride + p0 + v * lanes::<S, T>()..], a);
                        }
                    }
                }
                for k in 0..OB.min(o - block * OB) {
                    let oo = block * OB + k;
                    let channel = &mut y[oo * ho * wo..][..ho * wo];
                    for (r, line) in channel.chunks_exact_mut(wo).enumerate() {
                        let src = &tiles[k * stride + r * flat.row..][..wo];
                        match &epilogue {
                            None => copy_row(line, src),
                            Some(e) => e.write(oo, ((image * o + oo) * ho + r) * wo, line, src),
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
}

/// `w: [O, C, taps]` as `[⌈O/OB⌉, C, taps, OB]`, the missing output channels zero.
pub(super) fn pack_weights<T: Lane, const OB: usize>(
    w: &[T],
    o: usize,
    c: usize,
    taps: usize,
) -> Vec<T> {
    let blocks = o.div_ceil(OB);
    let mut packed = Vec::with_capacity(blocks * c * taps * OB);
    for block in 0..blocks {
        for ci in 0..c {
            for t in 0..taps {
                packed.extend((0..OB).map(|k| {
                    let oo = block * OB + k;
                    if oo < o {
                        w[(oo * c + ci) * taps + t]
                    } else {
                        T::ZERO
                    }
                }));
            }
        }
    }
    packed
}

/// One tile of the forward kernel: positions `p0..p0 + NV·lanes` of one block of `OB`
/// output channels, summed over every input channel and tap.
pub(super) struct Tile<'a, T> {
    /// The padded-flat image, `plane` elements per input channel.
    pub(super) xp: &'a [T],
    /// The block's weights, `[C, taps, OB]`.
    pub(super) wb: &'a [T],
    pub(super) plane: usize,
    pub(super) p0: usize,
}

impl<T: Lane> Tile<'_, T> {
    /// With the taps given as offsets, one by one (any kernel shape).
    #[inline(always)]
    fn by_taps<S: Simd, const OB: usize, const NV: usize>(
        &self,
        simd: S,
        taps: &[usize],
    ) -> [[T::V<S>; NV]; OB] {
        let n = lanes::<S, T>();
        let mut acc = [[T::splat(simd, T::ZERO); NV]; OB];
        let channels = self.xp.chunks_exact(self.plane);
        for (xc, wc) in channels.zip(self.wb.chunks_exact(taps.len() * OB)) {
            let xc = &xc[self.p0..];
            for (&off, wt) in taps.iter().zip(wc.chunks_exact(OB)) {
                multiply_add::<S, T, OB, NV>(simd, &xc[off..off + NV * n], wt, &mut acc);
            }
        }
        acc
    }

    /// With the taps taken a kernel row at a time (`rows`: each row's offset), `KW` taps
    /// a row: one bounds check per row instead of one per tap.
    #[inline(always)]
    pub(super) fn by_rows<S: Simd, const OB: usize, const NV: usize, const KW: usize>(
        &self,
        simd: S,
        rows: &[usize],
    ) -> [[T::V<S>; NV]; OB] {
        let n = lanes::<S, T>();
        let mut acc = [[T::splat(simd, T::ZERO); NV]; OB];
        let channels = self.xp.chunks_exact(self.plane);
        for (xc, wc) in channels.zip(self.wb.chunks_exact(rows.len() * KW * OB)) {
            let xc = &xc[self.p0..];
            for (&off, wr) in rows.iter().zip(wc.chunks_exact(KW * OB)) {
                let window = &xc[off..][..KW - 1 + NV * n];
                for j in 0..KW {
                    let wt = &wr[j * OB..][..OB];
                    multiply_add::<S, T, OB, NV>(simd, &window[j..][..NV * n], wt, &mut acc);
                }
            }
        }
        acc
    }
}

/// `acc[k][v] += w[k] · xs[v·lanes ..]` for one tap: `xs` holds `NV` vectors of input
/// positions, `w` the tap's weight for each of `OB` output channels.
#[inline(always)]
fn multiply_add<S: Simd, T: Lane, const OB: usize, const NV: usize>(
    simd: S,
    xs: &[T],
    w: &[T],
    acc: &mut [[T::V<S>; NV]; OB],
) {
    let n = lanes::<S, T>();
    let mut xv = [T::splat(simd, T::ZERO); NV];
    for (v, xv) in xv.iter_mut().enumerate() {
        *xv = load::<S, T>(&xs[v * n..]);
    }
    for (acc, &wk) in acc.iter_mut().zip(w) {
        let wk = T::splat(simd, wk);
        for (a, &xv) in acc.iter_mut().zip(&xv) {
            *a = T::mul_add(simd, wk, xv, *a);
        }
    }
}

/// Images per partial sum of the weight gradient. The partials are added in one fixed
/// order, so the result does not depend on how many threads computed them (training is
/// bit-for-bit the same on any machine).
const IMAGES_PER_PARTIAL: usize = 8;

/// `∂w[o, c, i, j] = Σ_b Σ_(r, s) g[b, o, r, s] · x_padded[b, c, r + i, s + j]` for
/// `x: [B, C, H, W]`, `gr: [B, O, Ho, Wo]`: `[O, C, kh, kw]`.
pub(super) fn grad_weight<T: Lane>(
    isa: Isa,
    x: &[T],
    g: &ConvGeometry,
    gr: &[T],
    o: usize,
) -> Vec<T> {
    grad_weight_on(threads(), Algorithm::Fastest, isa, x, g, gr, o)
}

fn grad_weight_on<T: Lane>(
    threads: usize,
    algorithm: Algorithm,
    isa: Isa,
    x: &[T],
    g: &ConvGeometry,
    gr: &[T],
    o: usize,
) -> Vec<T> {
    let partials = g.b.div_ceil(IMAGES_PER_PARTIAL);
    let per_thread = partials.div_ceil(threads.min(partials).max(1)).max(1) * IMAGES_PER_PARTIAL;
    let (per_in, per_out) = (g.c * g.h * g.w, o * g.ho() * g.wo());
    let images = (0..g.b)
        .step_by(per_thread)
        .map(|b0| (b0 + per_thread).min(g.b) - b0);
    let partials = on_threads(per_thread, images, |b0, n| {
        isa.dispatch(GradWeightImages {
            winograd: algorithm == Algorithm::Fastest && winograd::fits(g),
            x: &x[b0 * per_in..][..n * per_in],
            gr: &gr[b0 * per_out..][..n * per_out],
            g,
            o,
        })
    });
    let mut total = vec![T::ZERO; o * g.k()];
    for part in partials.iter().flatten() {
        for (t, &p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    total
}

struct GradWeightImages<'a, T> {
    /// Whether the images go to [`winograd`] (which must fit the geometry).
    winograd: bool,
    x: &'a [T],
    gr: &'a [T],
    g: &'a ConvGeometry,
    o: usize,
}

impl<T: Lane> WithSimd for GradWeightImages<'_, T> {
    /// One partial sum per [`IMAGES_PER_PARTIAL`] images.
    type Output = Vec<Vec<T>>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Vec<Vec<T>> {
        if self.winograd {
            // 3 taps (a kernel row of the transformed problem) × 6 or 3 outputs: 18 or
            // 9 accumulators, as below.
            return if registers::<S, T>() >= 32 {
                self.run::<S, 3, 6>(simd)
            } else {
                self.run::<S, 3, 3>(simd)
            };
        }
        match (self.g.kh * self.g.kw, registers::<S, T>()) {
            // 9 taps × 2 outputs: 18 accumulators, with room to spare in AVX-512's 32
            // registers.
            (9, 32..) => self.run::<S, 9, 2>(simd),
            // In 16 registers 18 accumulators spill; a kernel row (3 taps) × 3 outputs
            // keeps 9 accumulators, 3 broadcasts and an input vector in registers.
            (9, _) => self.run::<S, 3, 3>(simd),
            // Other kernels one tap at a time, with as many outputs as registers allow:
            // accumulators, their broadcasts and an input vector.
            (_, 32..) => self.run::<S, 1, 12>(simd),
            _ => self.run::<S, 1, 6>(simd),
        }
    }
}

impl<T: Lane> GradWeightImages<'_, T> {
    /// Vectorised over input channels, so that no horizontal sums are needed: the input
    /// is transposed to channels-last (padded-flat, channels padded to whole vectors),
    /// and `TAPS` taps × `OB` output channels of one channel vector are accumulated in
    /// registers over a whole image (by [`winograd`], if chosen, with `OB` outputs).
    #[inline(always)]
    fn run<S: Simd, const TAPS: usize, const OB: usize>(self, simd: S) -> Vec<Vec<T>> {
        let Self {
            winograd,
            x,
            gr,
            g,
            o,
        } = self;
        let (per_in, per_out) = (g.c * g.h * g.w, o * g.ho() * g.wo());
        let mut xt = Vec::new();
        let mut partials = Vec::new();
        // A loop, not a closure: a closure does not inherit the instruction set this
        // function is compiled for, and the kernel inlined into it ran several times
        // slower.
        for (x, gr) in x
            .chunks(IMAGES_PER_PARTIAL * per_in)
            .zip(gr.chunks(IMAGES_PER_PARTIAL * per_out))
        {
            partials.push(if winograd {
                winograd::grad_weight::<S, T, OB>(simd, x, g, gr, o)
            } else {
                let images = Self {
                    winograd,
                    x,
                    gr,
                    g,
                    o,
                };
                images.partial::<S, TAPS, OB>(simd, &mut xt)
            });
        }
        partials
    }

    /// The weight gradient of these images, `xt` a scratch buffer.
    #[inline(always)]
    fn partial<S: Simd, const TAPS: usize, const OB: usize>(
        self,
        simd: S,
        xt: &mut Vec<T>,
    ) -> Vec<T> {
        let Self { x, gr, g, o, .. } = self;
        let n = lanes::<S, T>();
        let flat = PaddedFlat::new(g, 1);
        let taps = flat.taps(g);
        let cp = g.c.div_ceil(n) * n;
        let (ho, wo) = (g.ho(), g.wo());
        // ∂w as [O, taps, Cp].
        let mut sums = vec![T::ZERO; o * taps.len() * cp];
        for (xi, gi) in x
            .chunks_exact(g.c * g.h * g.w)
            .zip(gr.chunks_exact(o * ho * wo))
        {
            let lead = flat.pad_channel_blocks(g, xi, n, xt);
            let plane = |oo: usize| &gi[oo * ho * wo..][..ho * wo];
            let blocks = xt[lead..].chunks_exact(flat.plane * n);
            for (cb, block) in (0..cp).step_by(n).zip(blocks) {
                for (chunk, offs) in taps.chunks_exact(TAPS).enumerate() {
                    let dots = GradWeightDots::<S, T, TAPS> {
                        xts: &[bytemuck::cast_slice(block)],
                        row: flat.row,
                        ho,
                        wo,
                        offs: offs.try_into().expect("TAPS elements"),
                        stride: cp,
                        first_tap: chunk * TAPS,
                    };
                    let at = |oo: usize| (oo * taps.len()) * cp + cb;
                    dots.accumulate_all::<OB>(simd, o, |_, k| plane(k), at, &mut sums);
                }
            }
        }
        // [O, taps, Cp] → [O, C, taps]
        let mut out = Vec::with_capacity(o * g.c * taps.len());
        for per_o in sums.chunks_exact(taps.len() * cp) {
            for ci in 0..g.c {
                out.extend((0..taps.len()).map(|t| per_o[t * cp + ci]));
            }
        }
        out
    }
}

/// One channel block's taps of the weight gradient over some images.
pub(super) struct GradWeightDots<'a, S: Simd, T: Lane, const TAPS: usize> {
    /// The block's padded images, one vector (of `lanes` channels) per position.
    pub(super) xts: &'a [&'a [T::V<S>]],
    pub(super) row: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    /// Offsets (in positions) of these taps.
    pub(super) offs: &'a [usize; TAPS],
    /// Elements per tap in `sums` (the padded channel count).
    pub(super) stride: usize,
    /// Index of the first of these taps.
    pub(super) first_tap: usize,
}

impl<S: Simd, T: Lane, const TAPS: usize> GradWeightDots<'_, S, T, TAPS> {
    /// For each output channel `k`: `sums[at[k] + (first_tap + t)·stride ..][..lanes] +=
    /// Σ_i Σ_(r,s) gs(i, first + k)[r·wo + s] · xts[i][r·row + s + offs[t]]`, image `i`
    /// after image, the accumulators in registers throughout.
    #[inline(always)]
    pub(super) fn accumulate<'g, const OB: usize>(
        &self,
        simd: S,
        gs: &impl Fn(usize, usize) -> &'g [T],
        first: usize,
        at: [usize; OB],
        sums: &mut [T],
    ) -> usize {
        let at = |k: usize, t: usize| at[k] + (self.first_tap + t) * self.stride;
        let mut acc = [[T::splat(simd, T::ZERO); TAPS]; OB];
        for (k, acc) in acc.iter_mut().enumerate() {
            for (t, a) in acc.iter_mut().enumerate() {
                *a = load::<S, T>(&sums[at(k, t)..]);
            }
        }
        for (i, xt) in self.xts.iter().enumerate() {
            let mut planes = [&[][..]; OB];
            for (k, plane) in planes.iter_mut().enumerate() {
                *plane = gs(i, first + k);
            }
            for r in 0..self.ho {
                // Every slice exactly `wo` long, so that indexing by `s < wo` needs no
                // bounds checks: with them (and the offsets' arithmetic) in the loop, it
                // issued three instructions of overhead per multiply-add.
                let mut taps = [&xt[..0]; TAPS];
                for (x, &off) in taps.iter_mut().zip(self.offs) {
                    *x = &xt[r * self.row + off..][..self.wo];
                }
                let mut gr = [&planes[0][..0]; OB];
                for (g, gk) in gr.iter_mut().zip(&planes) {
                    *g = &gk[r * self.wo..][..self.wo];
                }
                for s in 0..self.wo {
                    // (A loop rather than `gs.map(…)`: see `run` on closures.)
                    let mut gv = [T::splat(simd, T::ZERO); OB];
                    for (v, g) in gv.iter_mut().zip(&gr) {
                        *v = T::splat(simd, g[s]);
                    }
                    for (t, x) in taps.iter().enumerate() {
                        let xv = x[s];
                        for k in 0..OB {
                            acc[k][t] = T::mul_add(simd, gv[k], xv, acc[k][t]);
                        }
                    }
                }
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            for (t, &a) in acc.iter().enumerate() {
                store::<S, T>(&mut sums[at(k, t)..], a);
            }
        }
        OB
    }

    /// [`GradWeightDots::accumulate`] for every output channel `0..o`, `gs(i, k)` the
    /// output gradient plane of image `i`, channel `k`, and `at(k)` its place in `sums`:
    /// `OB` channels at a time, the rest by two and one, never leaving a single channel
    /// where two groups of two can take it (a lone channel keeps too few accumulators to
    /// hide the latency of its multiply-adds).
    #[inline(always)]
    pub(super) fn accumulate_all<'g, const OB: usize>(
        &self,
        simd: S,
        o: usize,
        gs: impl Fn(usize, usize) -> &'g [T],
        at: impl Fn(usize) -> usize,
        sums: &mut [T],
    ) {
        let mut oo = 0;
        while oo < o {
            let left = o - oo;
            oo += if left >= OB && left - OB != 1 {
                self.accumulate::<OB>(simd, &gs, oo, std::array::from_fn(|k| at(oo + k)), sums)
            } else if left >= 2 {
                self.accumulate(simd, &gs, oo, [at(oo), at(oo + 1)], sums)
            } else {
                self.accumulate(simd, &gs, oo, [at(oo)], sums)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set this CPU can run.
    fn isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Chosen, Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        if pulp::x86::V3::try_new().is_some() {
            isas.push(Isa::Avx2);
        }
        isas
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// [`values`] rounded to f32.
    fn values_f32(n: usize, seed: u64) -> Vec<f32> {
        values(n, seed).into_iter().map(|a| a as f32).collect()
    }

    /// `x[b, c, r, s]` of the zero-padded input, by index arithmetic.
    fn padded(x: &[f64], g: &ConvGeometry, b: usize, c: usize, r: usize, s: usize) -> f64 {
        let (Some(r), Some(s)) = (r.checked_sub(g.ph), s.checked_sub(g.pw)) else {
            return 0.0;
        };
        if r >= g.h || s >= g.w {
            return 0.0;
        }
        x[((b * g.c + c) * g.h + r) * g.w + s]
    }

    /// The definition, summed term by term.
    fn naive_conv(x: &[f64], g: &ConvGeometry, w: &[f64], o: usize) -> Vec<f64> {
        let mut y = Vec::new();
        for b in 0..g.b {
            for oo in 0..o {
                for r in 0..g.ho() {
                    for s in 0..g.wo() {
                        let mut sum = 0.0;
                        for c in 0..g.c {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    sum += w[((oo * g.c + c) * g.kh + i) * g.kw + j]
                                        * padded(x, g, b, c, r + i, s + j);
                                }
                            }
                        }
                        y.push(sum);
                    }
                }
            }
        }
        y
    }

    fn naive_grad_weight(x: &[f64], g: &ConvGeometry, gr: &[f64], o: usize) -> Vec<f64> {
        let (ho, wo) = (g.ho(), g.wo());
        let mut dw = Vec::new();
        for oo in 0..o {
            for c in 0..g.c {
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let mut sum = 0.0;
                        for b in 0..g.b {
                            for r in 0..ho {
                                for s in 0..wo {
                                    sum += gr[((b * o + oo) * ho + r) * wo + s]
                                        * padded(x, g, b, c, r + i, s + j);
                                }
                            }
                        }
                        dw.push(sum);
                    }
                }
            }
        }
        dw
    }

    /// Shapes that leave remainders everywhere: channels that do not fill a vector or a
    /// block of outputs, images smaller than a tile, odd batches, 1×1, 3×1 and 5×5
    /// kernels, paddings 0 to k − 1; a 1×1 kernel over whole tiles (8×8); small planes
    /// (8×8, 7×7) that the Winograd kernel lays end to end, the last batch part full; and
    /// rows of whole tiles (16×16), whose garbage columns it skips.
    fn geometries() -> Vec<(ConvGeometry, usize)> {
        let geom = |b, c, h, w, (kh, kw), (ph, pw)| ConvGeometry {
            b,
            c,
            h,
            w,
            kh,
            kw,
            ph,
            pw,
        };
        vec![
            (geom(1, 1, 1, 1, (1, 1), (0, 0)), 1),
            (geom(1, 3, 5, 7, (3, 3), (1, 1)), 3),
            (geom(3, 17, 6, 5, (3, 3), (1, 1)), 12),
            (geom(2, 4, 8, 8, (3, 3), (0, 0)), 9),
            (geom(2, 5, 4, 6, (5, 5), (2, 2)), 5),
            (geom(2, 6, 3, 3, (3, 3), (2, 2)), 16),
            (geom(5, 16, 9, 9, (1, 1), (0, 0)), 8),
            (geom(3, 5, 8, 8, (1, 1), (0, 0)), 11),
            (geom(5, 2, 2, 3, (3, 3), (1, 1)), 2),
            (geom(2, 3, 6, 5, (3, 1), (1, 0)), 4),
            (geom(3, 32, 10, 12, (3, 3), (1, 1)), 33),
            (geom(11, 6, 8, 8, (3, 3), (1, 1)), 5),
            (geom(2, 5, 16, 16, (3, 3), (1, 1)), 7),
            (geom(9, 4, 7, 7, (3, 3), (1, 1)), 6),
        ]
    }

    fn max_rel_err(ours: &[f64], reference: &[f64]) -> f64 {
        assert_eq!(ours.len(), reference.len());
        ours.iter()
            .zip(reference)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0, f64::max)
    }

    /// Both algorithms against the definition; the forward convolution of
    /// [`Algorithm::Fastest`] (Winograd's F(4, 3) where it pays) held to `fastest_tol`,
    /// everything else to `tol`.
    fn check<T: Lane>(isa: Isa, to: fn(f64) -> T, from: fn(T) -> f64, tol: f64, fastest_tol: f64) {
        for (i, (g, o)) in geometries().into_iter().enumerate() {
            let x64 = values(g.b * g.c * g.h * g.w, 1 + i as u64);
            let w64 = values(o * g.k(), 100 + i as u64);
            let gr64 = values(g.b * o * g.ho() * g.wo(), 200 + i as u64);
            let cast = |v: &[f64]| v.iter().map(|&a| to(a)).collect::<Vec<T>>();
            let back = |v: Vec<T>| v.into_iter().map(from).collect::<Vec<f64>>();
            let (x, w, gr) = (cast(&x64), cast(&w64), cast(&gr64));
            for a in [Algorithm::Fastest, Algorithm::Direct] {
                let y = back(conv_by(a, isa, &x, &g, &w, o, None, false).0);
                let err = max_rel_err(&y, &naive_conv(&x64, &g, &w64, o));
                let conv_tol = if a == Algorithm::Fastest {
                    fastest_tol
                } else {
                    tol
                };
                assert!(
                    err < conv_tol,
                    "{isa:?} {a:?} conv {g:?} o={o}: error {err:e}"
                );
                let dw = back(grad_weight_on(threads(), a, isa, &x, &g, &gr, o));
                let err = max_rel_err(&dw, &naive_grad_weight(&x64, &g, &gr64, o));
                assert!(
                    err < tol,
                    "{isa:?} {a:?} grad_weight {g:?} o={o}: error {err:e}"
                );
            }
        }
    }

    #[test]
    fn weight_gradient_does_not_depend_on_its_register_tile() {
        // Each accumulator sums over the image's positions in one order whatever the tile,
        // so the tile chosen for an instruction set's registers changes no bit.
        struct Tiled<'a, const TAPS: usize, const OB: usize>(GradWeightImages<'a, f32>);
        impl<const TAPS: usize, const OB: usize> WithSimd for Tiled<'_, TAPS, OB> {
            type Output = Vec<Vec<f32>>;
            fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
                self.0.run::<S, TAPS, OB>(simd)
            }
        }
        let g = ConvGeometry {
            b: 11,
            c: 13,
            h: 6,
            w: 7,
            kh: 3,
            kw: 3,
            ph: 1,
            pw: 1,
        };
        let o = 7;
        let x = values_f32(g.b * g.c * g.h * g.w, 17);
        let gr = values_f32(g.b * o * g.ho() * g.wo(), 18);
        let job = || GradWeightImages {
            winograd: false,
            x: &x,
            gr: &gr,
            g: &g,
            o,
        };
        for isa in isas() {
            let wide = isa.dispatch(Tiled::<9, 2>(job()));
            for other in [
                isa.dispatch(Tiled::<3, 3>(job())),
                isa.dispatch(Tiled::<9, 1>(job())),
                isa.dispatch(Tiled::<1, 2>(job())),
                isa.dispatch(Tiled::<1, 6>(job())),
                isa.dispatch(Tiled::<3, 4>(job())),
            ] {
                let bits = |v: &Vec<Vec<f32>>| -> Vec<u32> {
                    v.iter().flatten().map(|a| a.to_bits()).collect()
                };
                assert_eq!(bits(&wide), bits(&other), "{isa:?}");
            }
        }
    }

    #[test]
    fn weight_gradient_does_not_depend_on_the_thread_count() {
        let g = ConvGeometry {
            b: 37,
            c: 5,
            h: 6,
            w: 7,
            kh: 3,
            kw: 3,
            ph: 1,
            pw: 1,
        };
        let x = values_f32(g.b * g.c * g.h * g.w, 7);
        let gr = values_f32(g.b * 4 * g.ho() * g.wo(), 8);
        for a in [Algorithm::Fastest, Algorithm::Direct] {
            let one = grad_weight_on(1, a, Isa::Chosen, &x, &g, &gr, 4);
            for threads in [2, 3, 8] {
                let many = grad_weight_on(threads, a, Isa::Chosen, &x, &g, &gr, 4);
                assert!(
                    one.iter()
                        .zip(&many)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{a:?}, {threads} threads"
                );
            }
        }
    }

    /// The moments [`conv_then`] takes of each output plane as it writes it, on every
    /// instruction set (a 3×3 kernel, and a 1×1 over whole tiles, its own path), against
    /// the returned planes summed in f64: the sum, the squares about the plane's own mean
    /// (rounded to f32), and that mean.
    #[test]
    fn plane_moments_of_the_output_on_every_instruction_set() {
        let geometries = [
            (
                ConvGeometry {
                    b: 3,
                    c: 5,
                    h: 7,
                    w: 6,
                    kh: 3,
                    kw: 3,
                    ph: 1,
                    pw: 1,
                },
                9,
            ),
            (
                ConvGeometry {
                    b: 2,
                    c: 3,
                    h: 8,
                    w: 8,
                    kh: 1,
                    kw: 1,
                    ph: 0,
                    pw: 0,
                },
                4,
            ),
            // Planes laid end to end by the Winograd kernel.
            (
                ConvGeometry {
                    b: 7,
                    c: 4,
                    h: 8,
                    w: 8,
                    kh: 3,
                    kw: 3,
                    ph: 1,
                    pw: 1,
                },
                5,
            ),
        ];
        for isa in isas() {
            for (i, &(g, o)) in geometries.iter().enumerate() {
                let to_f32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32 + 3.0).collect();
                let x: Vec<f32> = to_f32(values(g.b * g.c * g.h * g.w, 71 + i as u64));
                let w: Vec<f32> = to_f32(values(o * g.k(), 81 + i as u64));
                let (y, moments) = conv_then(isa, &x, &g, &w, o, None, true);
                let sz = g.ho() * g.wo();
                assert_eq!(moments.len(), g.b * o, "{isa:?} {g:?}");
                for (plane, &[sum, squares, mean]) in y.chunks_exact(sz).zip(&moments) {
                    let want_sum: f64 = plane.iter().map(|&v| f64::from(v)).sum();
                    let m = (want_sum / sz as f64) as f32;
                    let want_squares: f64 = plane.iter().map(|&v| f64::from(v - m).powi(2)).sum();
                    let case = format!("{isa:?} {g:?}");
                    assert!(
                        (sum - want_sum).abs() < 1e-5 * want_sum.abs(),
                        "{case}: sum"
                    );
                    assert!(
                        (mean - f64::from(m)).abs() < 1e-6 * f64::from(m).abs(),
                        "{case}"
                    );
                    assert!(
                        (squares - want_squares).abs() < 1e-4 * want_squares,
                        "{case}"
                    );
                }
            }
        }
    }

    #[test]
    fn kernels_match_the_definition_on_every_instruction_set_in_f64_and_f32() {
        for isa in isas() {
            check::<f64>(isa, |v| v, |v| v, 1e-12, 1e-12);
            // F(4, 3)'s transforms (coefficients up to 8, and 1/24) cost f32 a few more
            // units in the last place than the direct sum.
            check::<f32>(isa, |v| v as f32, f64::from, 1e-5, 4e-5);
        }
    }
}
