//! Training-time data augmentation (docs/method.md §6): random crop with zero padding, horizontal
//! flip and Cutout, applied while converting bytes to `f32`.
//!
//! Augmentation is split in two: [`Augmentation::sample`] draws a [`Transform`] from a
//! random number generator, and [`Transform::apply`] carries it out. The split keeps the
//! random draws in one place (so the [`Loader`](crate::Loader) is reproducible) and
//! lets tests check the pixel maths for a known transform.

use rand::Rng;

/// Byte → `f32` in `[0, 1]`, exactly `b as f32 / 255.0` (torchvision's `ToTensor`).
static TO_UNIT: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as f32 / 255.0;
        i += 1;
    }
    t
};

/// Convert bytes to `f32` in `[0, 1]`.
pub(crate) fn to_unit(src: &[u8], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = TO_UNIT[usize::from(s)];
    }
}

/// The training augmentation of the reference: random crop, horizontal flip, Cutout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Augmentation {
    /// Random crop of the original size from the image padded with this many zero pixels
    /// on every side (torchvision's `RandomCrop(size, padding)`); 0 turns cropping off.
    pub crop_padding: usize,
    /// Mirror left-right with probability 1/2.
    pub horizontal_flip: bool,
    /// Cutout (DeVries & Taylor, 2017): zero a square of this side in every channel,
    /// its centre uniform over the image, clipped at the borders.
    pub cutout: Option<usize>,
}

impl Augmentation {
    /// No augmentation.
    pub fn none() -> Self {
        Augmentation {
            crop_padding: 0,
            horizontal_flip: false,
            cutout: None,
        }
    }

    /// The reference's training augmentation: crop with 4 pixels of padding and flip,
    /// no Cutout.
    pub fn standard() -> Self {
        Augmentation {
            crop_padding: 4,
            horizontal_flip: true,
            cutout: None,
        }
    }

    /// Whether this augmentation leaves every image unchanged.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.horizontal_flip && self.cutout.is_none()
    }

    /// Draw the transform for one image of shape `(C, H, W)`.
    ///
    /// Draws, in this order and only for the parts that are on: the crop's row and column
    /// offsets (each uniform in `0..=2*crop_padding`), the flip (probability 1/2), the
    /// Cutout centre's row and column (uniform in `0..H`, `0..W`).
    pub fn sample<R: Rng + ?Sized>(&self, shape: (usize, usize, usize), rng: &mut R) -> Transform {
        let (_, h, w) = shape;
        let p = self.crop_padding as isize;
        let shift = if p > 0 {
            let dy = rng.gen_range(0..=2 * p) - p;
            let dx = rng.gen_range(0..=2 * p) - p;
            (dy, dx)
        } else {
            (0, 0)
        };
        let flip = self.horizontal_flip && rng.gen_bool(0.5);
        let cutout = match self.cutout {
            Some(side) if h > 0 && w > 0 => {
                let cy = rng.gen_range(0..h);
                let cx = rng.gen_range(0..w);
                Some(Rect::centred(cy, cx, side, h, w))
            }
            _ => None,
        };
        Transform {
            shift,
            flip,
            cutout,
        }
    }
}

/// A rectangle of pixels, rows `top..bottom` and columns `left..right`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// First row.
    pub top: usize,
    /// One past the last row.
    pub bottom: usize,
    /// First column.
    pub left: usize,
    /// One past the last column.
    pub right: usize,
}

impl Rect {
    /// The `side`×`side` square whose centre is `(cy, cx)` (the top-left of the four
    /// middle pixels for even sides), clipped to an `h`×`w` image.
    ///
    /// For even sides this is exactly the reference Cutout's
    /// `clip(c - side//2, 0, n) .. clip(c + side//2, 0, n)`. For odd sides the reference
    /// zeroes only `side - 1` pixels a side; here it is `side`.
    pub fn centred(cy: usize, cx: usize, side: usize, h: usize, w: usize) -> Self {
        let span = |c: usize, n: usize| {
            let lo = c as isize - (side / 2) as isize;
            let hi = lo + side as isize;
            (
                lo.clamp(0, n as isize) as usize,
                hi.clamp(0, n as isize) as usize,
            )
        };
        let (top, bottom) = span(cy, h);
        let (left, right) = span(cx, w);
        Rect {
            top,
            bottom,
            left,
            right,
        }
    }
}

/// One concrete augmentation of one image: `out = cutout(shift(flip(image)))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    /// `(dy, dx)`: `out[y][x] = in[y + dy][x + dx]`, zero where that lies outside the
    /// image. A crop with padding `p` at offsets `(oy, ox)` of the padded image is the
    /// shift `(oy - p, ox - p)`.
    pub shift: (isize, isize),
    /// Mirror left-right (before shifting).
    pub flip: bool,
    /// Zero this rectangle in every channel (after shifting).
    pub cutout: Option<Rect>,
}

impl Transform {
    /// The transform that changes nothing.
    pub fn identity() -> Self {
        Transform {
            shift: (0, 0),
            flip: false,
            cutout: None,
        }
    }

    /// Write the transformed `image` (bytes, CHW of `shape`) into `out` as `f32` in `[0, 1]`.
    ///
    /// # Panics
    /// If `image` or `out` does not hold exactly `C*H*W` elements.
    pub fn apply(&self, image: &[u8], shape: (usize, usize, usize), out: &mut [f32]) {
        let (c, h, w) = shape;
        let plane = h * w;
        assert_eq!(image.len(), c * plane, "image size does not match shape");
        assert_eq!(out.len(), c * plane, "output size does not match shape");
        if *self == Transform::identity() {
            to_unit(image, out);
            return;
        }
        let (dy, dx) = self.shift;
        let (hi, wi) = (h as isize, w as isize);
        // Output columns whose source column x + dx lies inside the image.
        let x_lo = (-dx).clamp(0, wi) as usize;
        let x_hi = (wi - dx).clamp(0, wi) as usize;
        for (src, dst) in image.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
            for (y, row) in dst.chunks_exact_mut(w).enumerate() {
                let sy = y as isize + dy;
                if sy < 0 || sy >= hi || x_lo >= x_hi {
                    row.fill(0.0);
                    continue;
                }
                let srow = &src[sy as usize * w..][..w];
                row[..x_lo].fill(0.0);
                row[x_hi..].fill(0.0);
                // Columns of the (possibly flipped) image read, s0..s1, within 0..=w.
                let s0 = (x_lo as isize + dx) as usize;
                let s1 = (x_hi as isize + dx) as usize;
                let row = &mut row[x_lo..x_hi];
                if self.flip {
                    // flipped[x] = srow[w - 1 - x]
                    to_unit_rev(&srow[w - s1..w - s0], row);
                } else {
                    to_unit(&srow[s0..s1], row);
                }
            }
        }
        if let Some(r) = self.cutout {
            let (bottom, right) = (r.bottom.min(h), r.right.min(w));
            for dst in out.chunks_exact_mut(plane) {
                for y in r.top.min(bottom)..bottom {
                    dst[y * w + r.left.min(right)..y * w + right].fill(0.0);
                }
            }
        }
    }
}

fn to_unit_rev(src: &[u8], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src.iter().rev()) {
        *d = TO_UNIT[usize::from(s)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    /// The definition, written the slow obvious way.
    fn reference(t: &Transform, image: &[u8], (c, h, w): (usize, usize, usize)) -> Vec<f32> {
        let mut out = vec![0.0; c * h * w];
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let sy = y as isize + t.shift.0;
                    let sx = x as isize + t.shift.1;
                    let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                    let cut = t.cutout.is_some_and(|r| {
                        (r.top..r.bottom).contains(&y) && (r.left..r.right).contains(&x)
                    });
                    if inside && !cut {
                        let sx = if t.flip {
                            w - 1 - sx as usize
                        } else {
                            sx as usize
                        };
                        let b = image[ch * h * w + sy as usize * w + sx];
                        out[ch * h * w + y * w + x] = f32::from(b) / 255.0;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn lut_is_exact_division() {
        for b in 0..=255u8 {
            assert_eq!(TO_UNIT[usize::from(b)], f32::from(b) / 255.0);
        }
        assert_eq!(TO_UNIT[255], 1.0);
    }

    #[test]
    fn cutout_rect_matches_reference_for_even_sides() {
        // Reference: y1 = clip(y - L//2, 0, h), y2 = clip(y + L//2, 0, h).
        assert_eq!(
            Rect::centred(0, 31, 16, 32, 32),
            Rect {
                top: 0,
                bottom: 8,
                left: 23,
                right: 32
            }
        );
        assert_eq!(Rect::centred(10, 10, 4, 32, 32).bottom, 12);
        // Odd: exactly `side` pixels.
        let r = Rect::centred(10, 10, 5, 32, 32);
        assert_eq!((r.top, r.bottom), (8, 13));
    }

    #[test]
    fn none_samples_identity_without_drawing() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut fresh = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let t = Augmentation::none().sample((1, 4, 4), &mut rng);
        assert_eq!(t, Transform::identity());
        assert_eq!(
            rand::RngCore::next_u64(&mut rng),
            rand::RngCore::next_u64(&mut fresh)
        );
    }

    #[test]
    fn sample_stays_in_range() {
        let aug = Augmentation {
            crop_padding: 2,
            horizontal_flip: true,
            cutout: Some(3),
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut flips, mut shifts) = (0, std::collections::HashSet::new());
        for _ in 0..2000 {
            let t = aug.sample((3, 6, 5), &mut rng);
            assert!((-2..=2).contains(&t.shift.0) && (-2..=2).contains(&t.shift.1));
            flips += usize::from(t.flip);
            shifts.insert(t.shift);
            let r = t.cutout.unwrap();
            assert!(r.top < r.bottom && r.bottom <= 6 && r.left < r.right && r.right <= 5);
        }
        assert_eq!(shifts.len(), 25, "every crop offset occurs");
        assert!(
            (800..1200).contains(&flips),
            "flip rate ~1/2, got {flips}/2000"
        );
    }

    fn arb_case() -> impl Strategy<Value = (Transform, Vec<u8>, (usize, usize, usize))> {
        (1usize..=3, 1usize..=7, 1usize..=7).prop_flat_map(|(c, h, w)| {
            let cut = prop::option::of((0..h, 0..w, 0usize..=8))
                .prop_map(move |o| o.map(|(cy, cx, s)| Rect::centred(cy, cx, s, h, w)));
            (
                (-9isize..=9, -9isize..=9, any::<bool>(), cut).prop_map(
                    |(dy, dx, flip, cutout)| Transform {
                        shift: (dy, dx),
                        flip,
                        cutout,
                    },
                ),
                prop::collection::vec(any::<u8>(), c * h * w),
                Just((c, h, w)),
            )
        })
    }

    proptest! {
        #[test]
        fn apply_matches_definition((t, image, shape) in arb_case()) {
            let mut out = vec![f32::NAN; image.len()];
            t.apply(&image, shape, &mut out);
            prop_assert_eq!(out, reference(&t, &image, shape));
        }
    }
}
