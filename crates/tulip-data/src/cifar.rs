//! Readers for the binary versions of CIFAR-10 and CIFAR-100.
//!
//! A CIFAR-10 record is 1 label byte followed by 3072 pixel bytes; a CIFAR-100 record is
//! a coarse label byte, a fine label byte and 3072 pixel bytes. The pixels are the red,
//! green and blue 32×32 planes in row-major order, i.e. already CHW. Tulip-rs uses the
//! 100 fine labels of CIFAR-100.
//!
//! Files: CIFAR-10 trains on `data_batch_1.bin` .. `data_batch_5.bin` and tests on
//! `test_batch.bin` (in `cifar-10-batches-bin/` as unpacked from the archive), 10,000
//! records each; CIFAR-100 trains on `train.bin` (50,000 records) and tests on `test.bin`
//! (10,000) (in `cifar-100-binary/`).

use std::path::{Path, PathBuf};

use crate::dataset::{check_count, check_labels};
use crate::{DataError, DatasetKind, Result};

/// Bytes of pixel data in one record (3×32×32).
pub const PIXELS: usize = 3 * 32 * 32;

/// Size in bytes of one record of `kind`, or `None` for a non-CIFAR dataset.
pub fn record_size(kind: DatasetKind) -> Option<usize> {
    match kind {
        DatasetKind::Cifar10 => Some(1 + PIXELS),
        DatasetKind::Cifar100 => Some(2 + PIXELS),
        _ => None,
    }
}

/// Read every record of a CIFAR binary file, however many it holds: `(pixels, labels)`,
/// pixels NCHW. [`load`](crate::load) reads the dataset's files with their record counts
/// checked as well.
///
/// For CIFAR-100 the labels returned are the fine labels (`0..100`).
///
/// # Errors
/// [`DataError::NotCifar`] if `kind` is not a CIFAR dataset; [`DataError::Io`] if the
/// file cannot be read; [`DataError::RecordSize`] if its size is not a multiple of the
/// record size; [`DataError::LabelOutOfRange`] for a label `>= kind.classes()`.
pub fn read_records(path: &Path, kind: DatasetKind) -> Result<(Vec<u8>, Vec<u8>)> {
    read(path, kind, None)
}

/// [`read_records`] of a file that must hold exactly `expected` records, else
/// [`DataError::RecordCount`].
pub(crate) fn read_counted(
    path: &Path,
    kind: DatasetKind,
    expected: usize,
) -> Result<(Vec<u8>, Vec<u8>)> {
    read(path, kind, Some(expected))
}

fn read(path: &Path, kind: DatasetKind, expected: Option<usize>) -> Result<(Vec<u8>, Vec<u8>)> {
    let record = record_size(kind).ok_or(DataError::NotCifar(kind))?;
    let data = std::fs::read(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    if data.len() % record != 0 {
        return Err(DataError::RecordSize {
            path: path.to_path_buf(),
            dataset: kind,
            len: data.len() as u64,
            record_size: record,
        });
    }
    let n = data.len() / record;
    if let Some(expected) = expected {
        check_count(path, kind, "records", expected, n)?;
    }
    let label_at = record - PIXELS - 1; // 0 for CIFAR-10, 1 (the fine label) for CIFAR-100
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for rec in data.chunks_exact(record) {
        labels.push(rec[label_at]);
        images.extend_from_slice(&rec[record - PIXELS..]);
    }
    check_labels(path, &labels, kind.classes())?;
    Ok((images, labels))
}

/// The subdirectory the archive of `kind` unpacks into.
pub(crate) fn archive_dir(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::Cifar100 => "cifar-100-binary",
        _ => "cifar-10-batches-bin",
    }
}

/// `(training files, test file)` of `kind`.
pub(crate) fn split_files(kind: DatasetKind) -> (&'static [&'static str], &'static str) {
    match kind {
        DatasetKind::Cifar100 => (&["train.bin"], "test.bin"),
        _ => (
            &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            "test_batch.bin",
        ),
    }
}

/// The directory that holds the `.bin` files: `dir/<archive dir>` if it exists, else `dir`.
pub(crate) fn resolve_dir(kind: DatasetKind, dir: &Path) -> PathBuf {
    let sub = dir.join(archive_dir(kind));
    if sub.is_dir() {
        sub
    } else {
        dir.to_path_buf()
    }
}

/// Whether `dir` holds the dataset (the first training file, directly or in the archive
/// subdirectory).
pub(crate) fn holds(kind: DatasetKind, dir: &Path) -> bool {
    let first = split_files(kind).0[0];
    dir.join(first).is_file() || dir.join(archive_dir(kind)).join(first).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes() {
        assert_eq!(record_size(DatasetKind::Cifar10), Some(3073));
        assert_eq!(record_size(DatasetKind::Cifar100), Some(3074));
        assert_eq!(record_size(DatasetKind::Mnist), None);
    }

    #[test]
    fn not_cifar_is_an_error() {
        let err = read_records(Path::new("x.bin"), DatasetKind::FashionMnist).unwrap_err();
        assert!(matches!(err, DataError::NotCifar(_)), "{err}");
    }
}
