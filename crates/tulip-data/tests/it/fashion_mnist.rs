//! The real Fashion-MNIST, as installed by the Debian/Ubuntu package
//! `dataset-fashion-mnist`. CI installs the package; a missing directory fails the test
//! rather than skipping it, so that the real-data checks cannot silently stop running.

use std::path::Path;
use std::sync::OnceLock;

use tulip_data::{load, Augmentation, Dataset, DatasetKind, Loader, SYSTEM_FASHION_MNIST};

fn data() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = Path::new(SYSTEM_FASHION_MNIST);
        assert!(
            dir.is_dir(),
            "{SYSTEM_FASHION_MNIST} is missing: install the Fashion-MNIST package with \
             `sudo apt-get install dataset-fashion-mnist` (CI installs it)"
        );
        load(DatasetKind::FashionMnist, dir).unwrap_or_else(|e| panic!("{e}"))
    })
}

#[test]
fn counts_shape_and_classes() {
    let d = data();
    assert_eq!(d.kind, DatasetKind::FashionMnist);
    assert_eq!(d.train.len(), 60_000);
    assert_eq!(d.test.len(), 10_000);
    assert_eq!(d.train.shape, (1, 28, 28));
    assert_eq!(d.test.shape, (1, 28, 28));
    assert_eq!(d.train.images.len(), 60_000 * 784);
    assert_eq!(d.train.label_histogram(10), vec![6000; 10]);
    assert_eq!(d.test.label_histogram(10), vec![1000; 10]);
}

#[test]
fn pixels_span_the_byte_range() {
    let d = data();
    for split in [&d.train, &d.test] {
        assert_eq!(split.images.iter().min(), Some(&0));
        assert_eq!(split.images.iter().max(), Some(&255));
        // Fashion-MNIST images have a black background: the first pixel is dark.
        assert!(
            split
                .images
                .chunks_exact(784)
                .filter(|im| im[0] == 0)
                .count()
                > split.len() / 2
        );
    }
}

#[test]
fn a_full_augmented_epoch_covers_every_example_once() {
    let d = data();
    let device = candle_core::Device::Cpu;
    let loader = Loader::train(&d.train, 128, Augmentation::standard(), 3, &device).unwrap();
    assert_eq!(loader.batches_per_epoch(), 469);
    let mut hist = [0usize; 10];
    let mut n = 0;
    for (b, batch) in loader.epoch(0).enumerate() {
        let batch = batch.unwrap();
        let want = if b == 468 { 60_000 - 468 * 128 } else { 128 };
        assert_eq!(batch.images.dims(), [want, 1, 28, 28]);
        for l in batch.labels.to_vec1::<u32>().unwrap() {
            hist[l as usize] += 1;
        }
        n += want;
    }
    assert_eq!(n, 60_000);
    assert_eq!(hist, [6000; 10]);
}
