//! CIFAR-10 and CIFAR-100 binary files in their real directory layouts.

use std::path::Path;

use tulip_data::cifar::read_records;
use tulip_data::{load, DataError, DatasetKind};

use crate::{assert_msg, pixel, pixels, write};

/// `n` records starting at global example `first`: CIFAR-10 label `(first+i) % 10`;
/// CIFAR-100 coarse `(first+i) % 20` and fine `(first+i)*7 % 100`; pixels `pixel(i, k)`.
fn records(kind: DatasetKind, first: usize, n: usize) -> Vec<u8> {
    let images = pixels(first, n, 3072);
    let mut out = Vec::with_capacity(n * (3072 + 2));
    for (i, image) in (first..first + n).zip(images.chunks_exact(3072)) {
        match kind {
            DatasetKind::Cifar10 => out.push((i % 10) as u8),
            _ => out.extend_from_slice(&[(i % 20) as u8, fine(i)]),
        }
        out.extend_from_slice(image);
    }
    out
}

fn fine(i: usize) -> u8 {
    (i * 7 % 100) as u8
}

/// Records in each CIFAR-10 file, and in CIFAR-100's `train.bin`: the sizes `load`
/// insists on.
const CIFAR10_FILE: usize = 10_000;
const CIFAR100_TRAIN: usize = 50_000;
const CIFAR_TEST: usize = 10_000;

/// CIFAR-10 in its true sizes: 5 training batches of 10,000 records (examples
/// 0..50,000, in order) and a test batch of 10,000 (examples 100,000..110,000).
fn write_cifar10(dir: &Path) {
    for b in 0..5 {
        let r = records(DatasetKind::Cifar10, CIFAR10_FILE * b, CIFAR10_FILE);
        write(dir, &format!("data_batch_{}.bin", b + 1), &r);
    }
    write(
        dir,
        "test_batch.bin",
        &records(DatasetKind::Cifar10, 100_000, CIFAR_TEST),
    );
}

#[test]
fn cifar10_loads_from_the_archive_layout() {
    let root = tempfile::tempdir().unwrap();
    write_cifar10(&root.path().join("cifar-10-batches-bin"));
    write(
        root.path(),
        "cifar-10-batches-bin/batches.meta.txt",
        b"airplane\n",
    );
    let data = load(DatasetKind::Cifar10, root.path()).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (50_000, 10_000));
    assert_eq!(data.train.shape, (3, 32, 32));
    assert_eq!(data.test.shape, (3, 32, 32));
    assert_eq!(data.train.images.len(), 50_000 * 3072);
    // The batches in order: example i carries label i % 10 throughout.
    assert!(data
        .train
        .labels
        .iter()
        .enumerate()
        .all(|(i, &l)| usize::from(l) == i % 10));
    assert_eq!(data.test.labels[..3], [0, 1, 2]);
    // Either side of each batch boundary, and both ends.
    for i in [0, 9, 9_999, 10_000, 10_001, 29_999, 30_000, 49_999] {
        // Planes R, G, B: byte k of the record's pixels is channel k/1024, row (k%1024)/32.
        assert!(
            data.train
                .image(i)
                .iter()
                .enumerate()
                .all(|(k, &v)| v == pixel(i, k)),
            "training image {i}"
        );
    }
    assert_eq!(data.test.image(2)[3071], pixel(100_002, 3071));
    assert_eq!(data.test.image(0)[1024], pixel(100_000, 1024)); // first green pixel
    assert_eq!(data.test.image(9_999)[7], pixel(109_999, 7));
}

#[test]
fn cifar10_loads_from_a_flat_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path());
    let data = load(DatasetKind::Cifar10, dir.path()).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (50_000, 10_000));
}

#[test]
fn cifar100_uses_fine_labels() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cifar-100-binary");
    write(
        &dir,
        "train.bin",
        &records(DatasetKind::Cifar100, 0, CIFAR100_TRAIN),
    );
    write(
        &dir,
        "test.bin",
        &records(DatasetKind::Cifar100, 60_000, CIFAR_TEST),
    );
    let data = load(DatasetKind::Cifar100, root.path()).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (50_000, 10_000));
    assert_eq!(data.train.shape, (3, 32, 32));
    let want: Vec<u8> = (0..CIFAR100_TRAIN).map(fine).collect();
    assert_eq!(data.train.labels, want);
    // Fine differs from coarse for these examples, so coarse labels would fail here.
    assert!((1..6).all(|i| fine(i) != (i % 20) as u8));
    let want: Vec<u8> = (60_000..70_000).map(fine).collect();
    assert_eq!(data.test.labels, want);
    for i in [3, 9_999] {
        assert!(
            data.test
                .image(i)
                .iter()
                .enumerate()
                .all(|(k, &v)| v == pixel(60_000 + i, k)),
            "test image {i}"
        );
    }
}

/// `load` of a CIFAR-10 directory in which `file` holds `bytes` and every other file is
/// complete.
fn load_cifar10_with(file: &str, bytes: &[u8]) -> DataError {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path());
    write(dir.path(), file, bytes);
    load(DatasetKind::Cifar10, dir.path()).unwrap_err()
}

#[test]
fn an_empty_batch_file_is_rejected() {
    let err = load_cifar10_with("data_batch_1.bin", b"");
    assert!(
        matches!(
            err,
            DataError::RecordCount {
                dataset: DatasetKind::Cifar10,
                expected: 10_000,
                found: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert_msg(
        &err,
        &[
            "data_batch_1.bin",
            "cifar10",
            "records",
            "expected 10000",
            "found 0",
        ],
    );
}

#[test]
fn batch_files_of_another_record_count_are_rejected() {
    // 100 records where the real file has 10,000.
    let err = load_cifar10_with("data_batch_3.bin", &records(DatasetKind::Cifar10, 0, 100));
    assert!(
        matches!(
            err,
            DataError::RecordCount {
                expected: 10_000,
                found: 100,
                ..
            }
        ),
        "{err:?}"
    );
    assert_msg(
        &err,
        &["data_batch_3.bin", "cifar10", "expected 10000", "found 100"],
    );
    // One record too many in the test batch.
    let err = load_cifar10_with(
        "test_batch.bin",
        &records(DatasetKind::Cifar10, 0, CIFAR_TEST + 1),
    );
    assert_msg(
        &err,
        &["test_batch.bin", "cifar10", "expected 10000", "found 10001"],
    );
    // CIFAR-100's train.bin holding one CIFAR-10 batch's worth of records.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "train.bin",
        &records(DatasetKind::Cifar100, 0, CIFAR10_FILE),
    );
    write(
        dir.path(),
        "test.bin",
        &records(DatasetKind::Cifar100, 0, CIFAR_TEST),
    );
    let err = load(DatasetKind::Cifar100, dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::RecordCount {
                dataset: DatasetKind::Cifar100,
                expected: 50_000,
                found: 10_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert_msg(
        &err,
        &["train.bin", "cifar100", "expected 50000", "found 10000"],
    );
}

#[test]
fn read_records_alone_reads_any_number_of_records() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "data_batch_1.bin",
        &records(DatasetKind::Cifar10, 0, 3),
    );
    let (images, labels) = read_records(&p, DatasetKind::Cifar10).unwrap();
    assert_eq!(labels, [0, 1, 2]);
    assert_eq!(images.len(), 3 * 3072);
}

#[test]
fn wrong_record_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = records(DatasetKind::Cifar10, 0, 2);
    r.pop();
    let p = write(dir.path(), "data_batch_1.bin", &r);
    let err = read_records(&p, DatasetKind::Cifar10).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::RecordSize {
                record_size: 3073,
                len: 6145,
                ..
            }
        ),
        "{err:?}"
    );
    assert_msg(&err, &["data_batch_1.bin", "size", "3073", "6145"]);
    // A CIFAR-10 file read as CIFAR-100 (3 records of 3073 bytes = 9219, not a multiple of 3074).
    let p = write(
        dir.path(),
        "train.bin",
        &records(DatasetKind::Cifar10, 0, 3),
    );
    let err = read_records(&p, DatasetKind::Cifar100).unwrap_err();
    assert_msg(&err, &["train.bin", "3074", "cifar100"]);
}

#[test]
fn label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = records(DatasetKind::Cifar10, 0, 3);
    r[2 * 3073] = 10; // label of record 2
    let p = write(dir.path(), "test_batch.bin", &r);
    let err = read_records(&p, DatasetKind::Cifar10).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 2,
                value: 10,
                classes: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert_msg(
        &err,
        &["test_batch.bin", "out of range", "label 10", "index 2"],
    );

    let mut r = records(DatasetKind::Cifar100, 0, 2);
    r[0] = 99; // coarse label: not used, not checked
    r[3074 + 1] = 100; // fine label of record 1
    let p = write(dir.path(), "test.bin", &r);
    let err = read_records(&p, DatasetKind::Cifar100).unwrap_err();
    assert_msg(&err, &["test.bin", "label 100", "index 1", "100 classes"]);
}

#[test]
fn missing_batch_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path());
    std::fs::remove_file(dir.path().join("data_batch_4.bin")).unwrap();
    let err = load(DatasetKind::Cifar10, dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert_msg(&err, &["data_batch_4.bin", "cannot read"]);
}
