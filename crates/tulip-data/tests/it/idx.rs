//! IDX files: exact read-back, raw and gzip, and one error per kind of bad input.

use tulip_data::idx::{read_images, read_labels};
use tulip_data::{load, DataError, DatasetKind};

use crate::{
    assert_msg, gz, idx_images, idx_labels, pixel, pixels, write, write_idx_dataset, IDX_TEST,
    IDX_TRAIN,
};

/// Two 2×3 images with hand-picked values, including 0 and 255.
const PIXELS: [u8; 12] = [0, 1, 2, 253, 254, 255, 10, 20, 30, 40, 50, 60];

#[test]
fn raw_images_and_labels_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let ip = write(dir.path(), "imgs", &idx_images(2, 2, 3, &PIXELS));
    let lp = write(dir.path(), "labs", &idx_labels(&[7, 0]));
    let (pixels, n, rows, cols) = read_images(&ip).unwrap();
    assert_eq!((n, rows, cols), (2, 2, 3));
    assert_eq!(pixels, PIXELS);
    assert_eq!(read_labels(&lp).unwrap(), [7, 0]);
}

#[test]
fn gzip_is_detected_by_magic_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    // Compressed without a .gz name, and raw with one.
    let ip = write(dir.path(), "imgs", &gz(&idx_images(2, 2, 3, &PIXELS)));
    let lp = write(dir.path(), "labs.gz", &idx_labels(&[7, 0]));
    let (pixels, n, rows, cols) = read_images(&ip).unwrap();
    assert_eq!((n, rows, cols, pixels.as_slice()), (2, 2, 3, &PIXELS[..]));
    assert_eq!(read_labels(&lp).unwrap(), [7, 0]);
    let lgz = write(dir.path(), "labs2.gz", &gz(&idx_labels(&[1, 2, 3])));
    assert_eq!(read_labels(&lgz).unwrap(), [1, 2, 3]);
}

#[test]
fn empty_idx_files_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let ip = write(dir.path(), "imgs", &idx_images(0, 28, 28, &[]));
    let (pixels, n, _, _) = read_images(&ip).unwrap();
    assert!(pixels.is_empty() && n == 0);
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_images(&dir.path().join("nope-idx3")).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert_msg(&err, &["nope-idx3", "cannot read"]);
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    // A label file read as images, and vice versa.
    let lp = write(dir.path(), "labels-as-images", &idx_labels(&[1, 2]));
    let err = read_images(&lp).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                expected: 0x803,
                found: 0x801,
                ..
            }
        ),
        "{err:?}"
    );
    assert_msg(
        &err,
        &["labels-as-images", "magic", "0x00000803", "0x00000801"],
    );
    let ip = write(
        dir.path(),
        "images-as-labels",
        &idx_images(2, 2, 3, &PIXELS),
    );
    let err = read_labels(&ip).unwrap_err();
    assert_msg(&err, &["images-as-labels", "magic", "expected 0x00000801"]);
    // Something else entirely, compressed.
    let jp = write(dir.path(), "junk.gz", &gz(b"hello world, not IDX"));
    assert_msg(&read_labels(&jp).unwrap_err(), &["junk.gz", "wrong magic"]);
}

#[test]
fn truncated_images_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let mut short = idx_images(2, 2, 3, &PIXELS);
    short.pop();
    let ip = write(dir.path(), "short-images", &short);
    let err = read_images(&ip).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 28,
                found: 27,
                ..
            }
        ),
        "{err:?}"
    );
    assert_msg(&err, &["short-images", "truncated", "28", "27"]);

    let lp = write(
        dir.path(),
        "short-labels.gz",
        &gz(&idx_labels(&[1, 2, 3])[..10]),
    );
    assert_msg(
        &read_labels(&lp).unwrap_err(),
        &["short-labels.gz", "truncated"],
    );

    // Shorter than the header itself.
    let hp = write(dir.path(), "stub", &idx_images(2, 2, 3, &[])[..9]);
    assert_msg(&read_images(&hp).unwrap_err(), &["stub", "truncated", "16"]);
}

#[test]
fn trailing_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut long = idx_labels(&[1, 2]);
    long.push(9);
    let lp = write(dir.path(), "long-labels", &long);
    assert_msg(&read_labels(&lp).unwrap_err(), &["long-labels", "trailing"]);
}

#[test]
fn corrupt_and_truncated_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let good = gz(&idx_images(2, 2, 3, &PIXELS));
    // Gzip magic followed by garbage.
    let mut bad = good[..10].to_vec();
    bad.extend_from_slice(&[0xff; 40]);
    let bp = write(dir.path(), "garbage.gz", &bad);
    let err = read_images(&bp).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    assert_msg(&err, &["garbage.gz", "gzip", "decompress"]);
    // A download cut short.
    let cp = write(dir.path(), "cut.gz", &good[..good.len() / 2]);
    let err = read_images(&cp).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    assert_msg(&err, &["cut.gz", "gzip"]);
}

#[test]
fn load_reads_raw_and_gz_datasets() {
    for compress in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dataset(dir.path(), IDX_TRAIN, IDX_TEST, compress);
        let data = load(DatasetKind::Mnist, dir.path()).unwrap();
        assert_eq!(data.kind, DatasetKind::Mnist);
        assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
        assert_eq!(data.train.shape, (1, 28, 28));
        assert_eq!(data.train.images.len(), 60_000 * 784);
        for (i, k) in [(4, 100), (255, 0), (256, 1), (9_999, 783)] {
            assert_eq!(data.test.image(i)[k], pixel(i, k), "test image {i}");
        }
        for (i, k) in [(11, 783), (59_999, 5)] {
            assert_eq!(data.train.image(i)[k], pixel(i, k), "train image {i}");
        }
        assert_eq!(data.train.labels[..3], [0, 1, 2]);
        assert_eq!(data.train.labels[59_999], 9);
        assert_eq!(data.test.label_histogram(10), [1000; 10]);
    }
}

#[test]
fn load_prefers_the_raw_file_when_both_exist() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), IDX_TRAIN, IDX_TEST, true);
    write(
        dir.path(),
        "t10k-labels-idx1-ubyte",
        &idx_labels(&[9; IDX_TEST]),
    );
    let data = load(DatasetKind::FashionMnist, dir.path()).unwrap();
    assert_eq!(data.test.label_histogram(10)[9], IDX_TEST);
}

/// An IDX file whose header declares another count than the real dataset's: fewer
/// images (with as many labels, so the two agree), or one label short.
#[test]
fn load_rejects_idx_files_with_the_wrong_count() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), IDX_TRAIN, IDX_TEST, false);
    write(
        dir.path(),
        "train-images-idx3-ubyte",
        &idx_images(100, 28, 28, &pixels(0, 100, 784)),
    );
    write(
        dir.path(),
        "train-labels-idx1-ubyte",
        &idx_labels(&[3; 100]),
    );
    let err = load(DatasetKind::Mnist, dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::RecordCount {
                expected: 60_000,
                found: 100,
                ..
            }
        ),
        "{err:?}"
    );
    assert_msg(
        &err,
        &[
            "train-images-idx3-ubyte",
            "mnist",
            "expected 60000",
            "found 100",
        ],
    );

    // Images right, labels one short (and compressed): the label file is named.
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), IDX_TRAIN, IDX_TEST, true);
    let labels: Vec<u8> = (0..IDX_TEST - 1).map(|i| (i % 10) as u8).collect();
    write(
        dir.path(),
        "t10k-labels-idx1-ubyte.gz",
        &gz(&idx_labels(&labels)),
    );
    let err = load(DatasetKind::FashionMnist, dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::RecordCount {
                what: "labels",
                expected: 10_000,
                found: 9_999,
                ..
            }
        ),
        "{err:?}"
    );
    assert_msg(
        &err,
        &[
            "t10k-labels-idx1-ubyte.gz",
            "fashion-mnist",
            "labels",
            "expected 10000",
            "found 9999",
        ],
    );
}

#[test]
fn load_reports_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), IDX_TRAIN, IDX_TEST, true);
    let mut labels = vec![0; IDX_TEST];
    (labels[1], labels[2]) = (9, 10);
    write(
        dir.path(),
        "t10k-labels-idx1-ubyte.gz",
        &gz(&idx_labels(&labels)),
    );
    let err = load(DatasetKind::FashionMnist, dir.path()).unwrap_err();
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
        &[
            "t10k-labels-idx1-ubyte.gz",
            "out of range",
            "label 10",
            "index 2",
            "10 classes",
        ],
    );
}

#[test]
fn load_reports_wrong_image_size() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), IDX_TRAIN, IDX_TEST, false);
    write(
        dir.path(),
        "train-images-idx3-ubyte",
        &idx_images(1, 2, 3, &PIXELS[..6]),
    );
    let err = load(DatasetKind::Mnist, dir.path()).unwrap_err();
    assert_msg(
        &err,
        &["train-images-idx3-ubyte", "image size", "28x28", "2x3"],
    );
}

#[test]
fn load_reports_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), IDX_TRAIN, IDX_TEST, true);
    std::fs::remove_file(dir.path().join("t10k-images-idx3-ubyte.gz")).unwrap();
    let err = load(DatasetKind::Mnist, dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert_msg(&err, &["t10k-images-idx3-ubyte", "cannot read"]);
}
