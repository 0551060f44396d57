//! CIFAR-10 and CIFAR-100 binary files in their real directory layouts.

use std::path::Path;

use tulip_data::cifar::read_records;
use tulip_data::{load, DataError, DatasetKind};

use crate::{assert_msg, pixel, write};

/// `n` records starting at global example `first`: CIFAR-10 label `(first+i) % 10`;
/// CIFAR-100 coarse `(first+i) % 20` and fine `(first+i)*7 % 100`.
fn records(kind: DatasetKind, first: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in first..first + n {
        match kind {
            DatasetKind::Cifar10 => out.push((i % 10) as u8),
            _ => out.extend_from_slice(&[(i % 20) as u8, fine(i)]),
        }
        out.extend((0..3072).map(|k| pixel(i, k)));
    }
    out
}

fn fine(i: usize) -> u8 {
    (i * 7 % 100) as u8
}

/// CIFAR-10 with 5 training batches of 2 records (examples 0..10) and 3 test records
/// (examples 100..103).
fn write_cifar10(dir: &Path) {
    for b in 0..5 {
        let r = records(DatasetKind::Cifar10, 2 * b, 2);
        write(dir, &format!("data_batch_{}.bin", b + 1), &r);
    }
    write(
        dir,
        "test_batch.bin",
        &records(DatasetKind::Cifar10, 100, 3),
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
    assert_eq!((data.train.len(), data.test.len()), (10, 3));
    assert_eq!(data.train.shape, (3, 32, 32));
    assert_eq!(data.test.shape, (3, 32, 32));
    assert_eq!(data.train.images.len(), 10 * 3072);
    assert_eq!(data.train.labels, (0..10).collect::<Vec<u8>>());
    assert_eq!(data.test.labels, [0, 1, 2]);
    for i in 0..10 {
        // Planes R, G, B: byte k of the record's pixels is channel k/1024, row (k%1024)/32.
        assert!(data
            .train
            .image(i)
            .iter()
            .enumerate()
            .all(|(k, &v)| v == pixel(i, k)));
    }
    assert_eq!(data.test.image(2)[3071], pixel(102, 3071));
    assert_eq!(data.test.image(0)[1024], pixel(100, 1024)); // first green pixel
}

#[test]
fn cifar10_loads_from_a_flat_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path());
    let data = load(DatasetKind::Cifar10, dir.path()).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (10, 3));
}

#[test]
fn cifar100_uses_fine_labels() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cifar-100-binary");
    write(&dir, "train.bin", &records(DatasetKind::Cifar100, 0, 6));
    write(&dir, "test.bin", &records(DatasetKind::Cifar100, 20, 4));
    let data = load(DatasetKind::Cifar100, root.path()).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (6, 4));
    assert_eq!(data.train.shape, (3, 32, 32));
    let want: Vec<u8> = (0..6).map(fine).collect();
    assert_eq!(data.train.labels, want);
    // Fine differs from coarse for these examples, so coarse labels would fail here.
    assert!((1..6).all(|i| fine(i) != (i % 20) as u8));
    assert_eq!(data.test.labels, (20..24).map(fine).collect::<Vec<u8>>());
    assert!(data
        .test
        .image(3)
        .iter()
        .enumerate()
        .all(|(k, &v)| v == pixel(23, k)));
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
