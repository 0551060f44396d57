//! Mini-batching: shapes, coverage, order, determinism, resumption and augmentation.
//!
//! Fixture splits use the label as the example's identity (labels are plain bytes to the
//! loader), so every output image can be matched with its source.

use candle_core::Device;
use proptest::prelude::*;
use tulip_data::{Augmentation, Batch, DataError, Loader, Split};

/// `n <= 256` images of shape `shape`, example `i` labelled `i`, every pixel in `1..=255`
/// (so a zero in an output marks padding or Cutout).
fn split(n: usize, shape: (usize, usize, usize)) -> Split {
    let len = shape.0 * shape.1 * shape.2;
    let images = (0..n)
        .flat_map(|i| (0..len).map(move |k| (1 + (i * 37 + k * 11) % 255) as u8))
        .collect();
    Split::new(images, (0..n as u8).collect(), shape).unwrap()
}

/// The batches as (label, image floats) per example.
fn examples(batches: impl Iterator<Item = tulip_data::Result<Batch>>) -> Vec<(usize, Vec<f32>)> {
    let mut out = Vec::new();
    for b in batches {
        let b = b.unwrap();
        let labels = b.labels.to_vec1::<u32>().unwrap();
        let dims = b.images.dims().to_vec();
        let images = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let per = dims[1..].iter().product::<usize>();
        assert_eq!(dims[0], labels.len());
        for (k, l) in labels.iter().enumerate() {
            out.push((*l as usize, images[k * per..(k + 1) * per].to_vec()));
        }
    }
    out
}

fn tensors(loader: &Loader<'_>, epoch: usize) -> Vec<(Vec<f32>, Vec<u32>)> {
    loader
        .epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            (
                b.images.flatten_all().unwrap().to_vec1().unwrap(),
                b.labels.to_vec1().unwrap(),
            )
        })
        .collect()
}

fn original(s: &Split, i: usize) -> Vec<f32> {
    s.image_f32(i)
}

/// The original image shifted by (dy, dx) (`out[y][x] = in[y+dy][x+dx]`, zero outside),
/// optionally mirrored first.
fn shifted(s: &Split, i: usize, dy: isize, dx: isize, flip: bool) -> Vec<f32> {
    let (c, h, w) = s.shape;
    let src = s.image_f32(i);
    let mut out = vec![0.0; c * h * w];
    for ch in 0..c {
        for y in 0..h as isize {
            for x in 0..w as isize {
                let (sy, sx) = (y + dy, x + dx);
                if (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx) {
                    let sx = if flip { w as isize - 1 - sx } else { sx };
                    out[ch * h * w + (y as usize) * w + x as usize] =
                        src[ch * h * w + sy as usize * w + sx as usize];
                }
            }
        }
    }
    out
}

#[test]
fn test_loader_is_in_order_unaugmented_with_partial_last_batch() {
    let s = split(23, (3, 4, 5));
    let l = Loader::test(&s, 10, &Device::Cpu).unwrap();
    assert_eq!(l.batches_per_epoch(), 3);
    let sizes: Vec<_> = l
        .epoch(0)
        .map(|b| b.unwrap().images.dims().to_vec())
        .collect();
    assert_eq!(
        sizes,
        [vec![10, 3, 4, 5], vec![10, 3, 4, 5], vec![3, 3, 4, 5]]
    );
    let ex = examples(l.epoch(7));
    assert_eq!(ex.len(), 23);
    for (i, (label, image)) in ex.iter().enumerate() {
        assert_eq!(*label, i);
        assert_eq!(*image, original(&s, i));
    }
    // Every epoch of a test loader is the same.
    assert_eq!(tensors(&l, 0), tensors(&l, 1));
}

#[test]
fn batch_dtypes_and_value_range() {
    let s = split(9, (1, 6, 6));
    let l = Loader::train(&s, 4, Augmentation::standard(), 0, &Device::Cpu).unwrap();
    for b in l.epoch(0) {
        let b = b.unwrap();
        assert_eq!(b.images.dtype(), candle_core::DType::F32);
        assert_eq!(b.labels.dtype(), candle_core::DType::U32);
        assert_eq!(b.images.rank(), 4);
        let v = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
    }
}

#[test]
fn each_example_exactly_once_per_epoch_in_a_shuffled_order() {
    let s = split(50, (1, 3, 3));
    let l = Loader::train(&s, 8, Augmentation::none(), 11, &Device::Cpu).unwrap();
    assert_eq!(l.batches_per_epoch(), 7);
    let mut orders = Vec::new();
    for e in 0..3 {
        let ex = examples(l.epoch(e));
        let order: Vec<usize> = ex.iter().map(|(l, _)| *l).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>(), "epoch {e}");
        for (label, image) in &ex {
            assert_eq!(*image, original(&s, *label), "no augmentation asked for");
        }
        assert_ne!(order, (0..50).collect::<Vec<_>>(), "shuffled");
        orders.push(order);
    }
    assert_ne!(orders[0], orders[1], "a new order each epoch");
    assert_ne!(orders[1], orders[2]);
}

#[test]
fn same_seed_and_epoch_give_identical_batches() {
    let s = split(40, (3, 5, 5));
    let aug = Augmentation {
        cutout: Some(2),
        ..Augmentation::standard()
    };
    let a = Loader::train(&s, 16, aug, 5, &Device::Cpu).unwrap();
    let b = Loader::train(&s, 16, aug, 5, &Device::Cpu).unwrap();
    assert_eq!(tensors(&a, 3), tensors(&b, 3));
    assert_eq!(tensors(&a, 0), tensors(&a, 0));
    assert_ne!(tensors(&a, 3), tensors(&a, 4), "another epoch differs");
    let c = Loader::train(&s, 16, aug, 6, &Device::Cpu).unwrap();
    assert_ne!(tensors(&a, 3), tensors(&c, 3), "another seed differs");
}

#[test]
fn resuming_mid_epoch_by_skipping_gives_the_same_batches() {
    let s = split(100, (1, 6, 6));
    let l = Loader::train(&s, 7, Augmentation::standard(), 9, &Device::Cpu).unwrap();
    let full = tensors(&l, 2);
    assert_eq!(full.len(), 15);
    let resumed: Vec<_> = l
        .epoch(2)
        .skip(9)
        .map(|b| {
            let b = b.unwrap();
            (
                b.images.flatten_all().unwrap().to_vec1().unwrap(),
                b.labels.to_vec1().unwrap(),
            )
        })
        .collect();
    assert_eq!(resumed, full[9..]);
    assert_eq!(l.epoch(2).len(), 15);
}

#[test]
fn invalid_batch_sizes() {
    let s = split(5, (1, 2, 2));
    for bs in [0, 6] {
        let err = Loader::test(&s, bs, &Device::Cpu).unwrap_err();
        assert!(
            matches!(err, DataError::InvalidBatchSize { batch_size, len: 5 } if batch_size == bs)
        );
        assert!(
            err.to_string().contains(&format!("batch size {bs}")),
            "{err}"
        );
        let err = Loader::train(&s, bs, Augmentation::none(), 0, &Device::Cpu).unwrap_err();
        assert!(matches!(err, DataError::InvalidBatchSize { .. }), "{err}");
    }
    let l = Loader::test(&s, 5, &Device::Cpu).unwrap();
    assert_eq!(l.batches_per_epoch(), 1);
    let empty = split(0, (1, 2, 2));
    assert!(Loader::test(&empty, 1, &Device::Cpu).is_err());
}

#[test]
fn flip_only_gives_the_original_or_its_mirror() {
    let s = split(60, (3, 4, 5));
    let aug = Augmentation {
        crop_padding: 0,
        horizontal_flip: true,
        cutout: None,
    };
    let l = Loader::train(&s, 16, aug, 1, &Device::Cpu).unwrap();
    let (mut same, mut mirrored) = (0, 0);
    for (i, image) in examples(l.epoch(0)) {
        if image == original(&s, i) {
            same += 1;
        } else {
            assert_eq!(image, shifted(&s, i, 0, 0, true), "example {i}");
            mirrored += 1;
        }
    }
    assert!(
        same > 10 && mirrored > 10,
        "{same} unflipped, {mirrored} flipped"
    );
}

#[test]
fn crop_gives_shifted_copies_with_zeros_entering() {
    let s = split(200, (1, 6, 6));
    let aug = Augmentation {
        crop_padding: 2,
        horizontal_flip: false,
        cutout: None,
    };
    let l = Loader::train(&s, 32, aug, 4, &Device::Cpu).unwrap();
    let mut seen = std::collections::HashSet::new();
    for (i, image) in examples(l.epoch(1)) {
        let shift = (-2..=2)
            .flat_map(|dy| (-2..=2).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| image == shifted(&s, i, dy, dx, false));
        let shift = shift.unwrap_or_else(|| panic!("example {i} is not a shifted copy"));
        let zeros = image.iter().filter(|&&v| v == 0.0).count();
        let (dy, dx) = (shift.0.unsigned_abs(), shift.1.unsigned_abs());
        assert_eq!(
            zeros,
            36 - (6 - dy) * (6 - dx),
            "zeros enter exactly where padded"
        );
        seen.insert(shift);
    }
    assert_eq!(seen.len(), 25, "all 25 offsets occur over 200 examples");
}

#[test]
fn cutout_zeroes_a_square_of_the_requested_size() {
    let s = split(200, (3, 8, 8));
    let aug = Augmentation {
        crop_padding: 0,
        horizontal_flip: false,
        cutout: Some(3),
    };
    let l = Loader::train(&s, 50, aug, 8, &Device::Cpu).unwrap();
    let mut inside = 0;
    for (i, image) in examples(l.epoch(0)) {
        let orig = original(&s, i);
        let zero: Vec<(usize, usize)> = (0..64)
            .filter(|&p| image[p] == 0.0)
            .map(|p| (p / 8, p % 8))
            .collect();
        // Same zeros in every channel; everything else untouched.
        for c in 0..3 {
            for p in 0..64 {
                let k = c * 64 + p;
                let cut = zero.contains(&(p / 8, p % 8));
                assert_eq!(image[k], if cut { 0.0 } else { orig[k] }, "example {i}");
            }
        }
        let rows: std::collections::BTreeSet<_> = zero.iter().map(|z| z.0).collect();
        let cols: std::collections::BTreeSet<_> = zero.iter().map(|z| z.1).collect();
        assert!(
            !zero.is_empty(),
            "the centre is inside the image, so something is cut"
        );
        assert_eq!(zero.len(), rows.len() * cols.len(), "a rectangle");
        assert!(rows.len() <= 3 && cols.len() <= 3);
        let touches =
            rows.contains(&0) || rows.contains(&7) || cols.contains(&0) || cols.contains(&7);
        if !touches {
            assert_eq!(zero.len(), 9, "a 3x3 square when away from the borders");
        }
        inside += usize::from(zero.len() == 9);
    }
    // The square is unclipped when its centre is in rows and columns 1..=6: 9/16 of cases.
    assert!((80..150).contains(&inside), "{inside} of 200 unclipped");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// With crop and flip on, every output is a shifted copy of the original or of its
    /// mirror, for any seed, epoch, padding and image size.
    #[test]
    fn crop_and_flip_outputs_are_shifted_copies(
        seed in any::<u64>(),
        epoch in 0usize..1000,
        pad in 1usize..=3,
        h in 1usize..=5,
        w in 1usize..=5,
        n in 1usize..=20,
        bs in 1usize..=20,
    ) {
        let s = split(n, (2, h, w));
        let bs = bs.min(n);
        let aug = Augmentation { crop_padding: pad, horizontal_flip: true, cutout: None };
        let l = Loader::train(&s, bs, aug, seed, &Device::Cpu).unwrap();
        let ex = examples(l.epoch(epoch));
        let mut labels: Vec<usize> = ex.iter().map(|e| e.0).collect();
        labels.sort_unstable();
        prop_assert_eq!(labels, (0..n).collect::<Vec<_>>());
        let p = pad as isize;
        for (i, image) in ex {
            let ok = (-p..=p).any(|dy| (-p..=p).any(|dx| {
                [false, true].iter().any(|&f| image == shifted(&s, i, dy, dx, f))
            }));
            prop_assert!(ok, "example {} is no shifted copy", i);
        }
    }
}
