//! Deterministic mini-batches on a device.

use std::fmt;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::augment::to_unit;
use crate::{Augmentation, DataError, Result, Split};

/// A mini-batch on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Images, `f32` `[B, C, H, W]` in `[0, 1]`.
    pub images: Tensor,
    /// Class labels, `u32` `[B]`.
    pub labels: Tensor,
}

impl Batch {
    /// Number of examples in the batch.
    pub fn len(&self) -> usize {
        self.labels.elem_count()
    }

    /// Whether the batch is empty (never the case for batches from a [`Loader`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Mini-batches of a [`Split`], reproducible from `(seed, epoch)` alone.
///
/// A training loader shuffles and augments; a test loader keeps the split's order and
/// does not augment. Every epoch yields each example exactly once, in
/// `ceil(len / batch_size)` batches, the last one partial if `batch_size` does not divide
/// `len` (`drop_last = false`, as the reference's PyTorch loaders, for training too).
///
/// Randomness: epoch `e` uses a `ChaCha8Rng` seeded from a mix of `seed` and `e`; stream 0
/// of it shuffles, stream `b + 1` draws the augmentation of batch `b`. So the batches of an
/// epoch depend on `(seed, epoch)` only, and any batch can be built without building the
/// ones before it: resuming mid-epoch with `loader.epoch(e).skip(k)` is cheap and yields
/// exactly the batches `k..` of the uninterrupted run.
pub struct Loader<'a> {
    split: &'a Split,
    batch_size: usize,
    shuffle: bool,
    aug: Augmentation,
    seed: u64,
    device: Device,
}

impl fmt::Debug for Loader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("examples", &self.split.len())
            .field("shape", &self.split.shape)
            .field("batch_size", &self.batch_size)
            .field("shuffle", &self.shuffle)
            .field("aug", &self.aug)
            .field("seed", &self.seed)
            .field("device", &self.device)
            .finish()
    }
}

impl<'a> Loader<'a> {
    /// Training loader: shuffled, augmented with `aug`.
    ///
    /// # Errors
    /// [`DataError::InvalidBatchSize`] if `batch_size` is 0 or larger than the split.
    pub fn train(
        split: &'a Split,
        batch_size: usize,
        aug: Augmentation,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        Self::new(split, batch_size, true, aug, seed, device)
    }

    /// Test loader: in the split's order, no augmentation.
    ///
    /// # Errors
    /// [`DataError::InvalidBatchSize`] if `batch_size` is 0 or larger than the split.
    pub fn test(split: &'a Split, batch_size: usize, device: &Device) -> Result<Self> {
        Self::new(split, batch_size, false, Augmentation::none(), 0, device)
    }

    fn new(
        split: &'a Split,
        batch_size: usize,
        shuffle: bool,
        aug: Augmentation,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 || batch_size > split.len() {
            return Err(DataError::InvalidBatchSize {
                batch_size,
                len: split.len(),
            });
        }
        Ok(Loader {
            split,
            batch_size,
            shuffle,
            aug,
            seed,
            device: device.clone(),
        })
    }

    /// Number of batches in one epoch, `ceil(len / batch_size)`.
    pub fn batches_per_epoch(&self) -> usize {
        self.split.len().div_ceil(self.batch_size)
    }

    /// The batch size (the last batch of an epoch may be smaller).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Number of examples per epoch.
    pub fn len(&self) -> usize {
        self.split.len()
    }

    /// Whether the loader has no examples (never: construction requires one).
    pub fn is_empty(&self) -> bool {
        self.split.is_empty()
    }

    /// The batches of `epoch` (0-based), in order. Building the iterator shuffles (O(len));
    /// each batch is converted and augmented as it is reached, and skipped batches cost
    /// nothing.
    pub fn epoch(&self, epoch: usize) -> Batches<'_> {
        let epoch_seed = mix(self.seed, epoch as u64);
        let order = self.shuffle.then(|| {
            let mut order: Vec<usize> = (0..self.split.len()).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
            order.shuffle(&mut rng);
            order
        });
        Batches {
            loader: self,
            order,
            epoch_seed,
            next: 0,
            end: self.batches_per_epoch(),
        }
    }

    fn batch(&self, order: Option<&[usize]>, epoch_seed: u64, b: usize) -> Result<Batch> {
        let split = self.split;
        let shape @ (c, h, w) = split.shape;
        let start = b * self.batch_size;
        let n = self.batch_size.min(split.len() - start);
        let il = split.image_len();
        let mut images = vec![0.0f32; n * il];
        let mut labels = Vec::with_capacity(n);
        let mut rng = (!self.aug.is_identity()).then(|| {
            let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
            rng.set_stream(b as u64 + 1);
            rng
        });
        for k in 0..n {
            let i = order.map_or(start + k, |o| o[start + k]);
            labels.push(u32::from(split.labels[i]));
            let out = &mut images[k * il..(k + 1) * il];
            match rng.as_mut() {
                Some(rng) => self
                    .aug
                    .sample(shape, rng)
                    .apply(split.image(i), shape, out),
                None => to_unit(split.image(i), out),
            }
        }
        Ok(Batch {
            images: Tensor::from_vec(images, (n, c, h, w), &self.device)?,
            labels: Tensor::from_vec(labels, n, &self.device)?,
        })
    }
}

/// The batches of one epoch, from [`Loader::epoch`].
pub struct Batches<'l> {
    loader: &'l Loader<'l>,
    order: Option<Vec<usize>>,
    epoch_seed: u64,
    next: usize,
    end: usize,
}

impl fmt::Debug for Batches<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batches")
            .field("next", &self.next)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let b = self.next;
        self.next += 1;
        Some(self.loader.batch(self.order.as_deref(), self.epoch_seed, b))
    }

    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        self.next = self.next.saturating_add(n).min(self.end);
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}

/// SplitMix64's finaliser: a bijection of `u64` that scatters nearby inputs.
fn splitmix64(z: u64) -> u64 {
    let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of one epoch. Distinct epochs of one seed get distinct seeds (the map
/// `epoch -> mix(seed, epoch)` is a bijection).
fn mix(seed: u64, epoch: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seeds_differ() {
        let seeds: std::collections::HashSet<_> = (0..1000).map(|e| mix(42, e)).collect();
        assert_eq!(seeds.len(), 1000);
        assert_ne!(mix(0, 1), mix(1, 0));
    }

    #[test]
    fn nth_past_end_is_none() {
        let s = Split::new(vec![0; 10], (0..10).collect(), (1, 1, 1)).unwrap();
        let l = Loader::test(&s, 3, &Device::Cpu).unwrap();
        assert_eq!(l.epoch(0).len(), 4);
        assert!(l.epoch(0).nth(4).is_none());
        assert!(l.epoch(0).nth(usize::MAX).is_none());
        let mut it = l.epoch(0);
        assert_eq!(it.nth(3).unwrap().unwrap().len(), 1);
        assert!(it.next().is_none());
    }
}
