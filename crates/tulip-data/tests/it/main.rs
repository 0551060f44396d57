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

/// The pixels of images `first..first + n`, `len` bytes each: byte `k` of image `i` is
/// `pixel(i, k)`. Built by copying from a table of 256 images, as `pixel` repeats with
/// period 256 in `i` (31 · 256 is a multiple of 256), so full-size datasets cost a few
/// memory copies rather than a call per byte.
pub fn pixels(first: usize, n: usize, len: usize) -> Vec<u8> {
    let table: Vec<u8> = (0..256)
        .flat_map(|i| (0..len).map(move |k| pixel(i, k)))
        .collect();
    let mut out = Vec::with_capacity(n * len);
    for i in first..first + n {
        let row = (i % 256) * len;
        out.extend_from_slice(&table[row..row + len]);
    }
    out
}

/// Training and test examples of the real MNIST and Fashion-MNIST: the sizes `load`
/// insists on.
pub const IDX_TRAIN: usize = 60_000;
/// See [`IDX_TRAIN`].
pub const IDX_TEST: usize = 10_000;

/// A complete 28×28 IDX dataset (train `n_train`, test `n_test` examples, label
/// `i % 10`), compressed or not, in `dir`. `load` accepts it only with
/// [`IDX_TRAIN`] and [`IDX_TEST`]; smaller ones serve `locate`.
pub fn write_idx_dataset(dir: &Path, n_train: usize, n_test: usize, compress: bool) {
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images = idx_images(n as u32, 28, 28, &pixels(0, n, 784));
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
