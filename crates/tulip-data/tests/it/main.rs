//! Integration tests of `tulip-data`: one test binary, fixtures built in code in temporary
//! directories, plus the real Fashion-MNIST from the `dataset-fashion-mnist` package.

mod cifar;
mod download;
mod fashion_mnist;
mod idx;
mod loader;
mod locate;

use std::io::Write;
use std::path::Path;

/// An IDX image file (uncompressed bytes).
pub fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0x0803, n, rows, cols] {
        out.extend_from_slice(&u32::to_be_bytes(v));
    }
    out.extend_from_slice(pixels);
    out
}

/// An IDX label file (uncompressed bytes).
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0x0801, labels.len() as u32] {
        out.extend_from_slice(&u32::to_be_bytes(v));
    }
    out.extend_from_slice(labels);
    out
}

/// Gzip-compress.
pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Write `bytes` to `dir/name`, returning the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Pixel `k` of image `i` of a fixture: distinct enough to catch any mix-up.
pub fn pixel(i: usize, k: usize) -> u8 {
    ((i * 31 + k * 7 + 3) % 256) as u8
}

/// A complete 28×28 IDX dataset (train `n_train`, test `n_test` examples, label
/// `i % 10`), compressed or not, in `dir`.
pub fn write_idx_dataset(dir: &Path, n_train: usize, n_test: usize, compress: bool) {
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let pixels: Vec<u8> = (0..n)
            .flat_map(|i| (0..784).map(move |k| pixel(i, k)))
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images = idx_images(n as u32, 28, 28, &pixels);
        let labels = idx_labels(&labels);
        let ext = if compress { ".gz" } else { "" };
        let (images, labels) = if compress {
            (gz(&images), gz(&labels))
        } else {
            (images, labels)
        };
        write(dir, &format!("{prefix}-images-idx3-ubyte{ext}"), &images);
        write(dir, &format!("{prefix}-labels-idx1-ubyte{ext}"), &labels);
    }
}

/// Assert that `err`'s message contains every one of `words`.
#[track_caller]
pub fn assert_msg(err: &tulip_data::DataError, words: &[&str]) {
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "error message {msg:?} lacks {w:?}");
    }
}
