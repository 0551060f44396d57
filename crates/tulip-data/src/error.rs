//! The error type of `tulip-data`.
//!
//! Every variant that concerns a file names the file, and every message says what is wrong
//! in words a user can act on (the CLI shows them as they are). Wrapped I/O and gzip errors
//! are written into the message rather than exposed as `source()`, so that an `anyhow`
//! chain does not print the same text twice.

use std::path::PathBuf;

use crate::DatasetKind;

/// Result alias used throughout `tulip-data`.
pub type Result<T> = std::result::Result<T, DataError>;

/// Everything that can go wrong while finding, reading or batching a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be read (missing, unreadable, ...).
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },

    /// A file starts with the gzip magic bytes but does not decompress.
    #[error("cannot decompress {}: corrupt or truncated gzip data ({error})", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        error: std::io::Error,
    },

    /// An IDX file does not start with the magic number of its kind.
    #[error(
        "{}: wrong magic number: expected {expected:#010x} ({what}), found {found:#010x}",
        path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What the file should hold ("IDX images" or "IDX labels").
        what: &'static str,
        /// The magic number expected.
        expected: u32,
        /// The first four bytes of the (decompressed) file, big-endian.
        found: u32,
    },

    /// A file is shorter than its header (or format) says it must be.
    #[error("{} is truncated: expected {expected} bytes, found {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the file must hold (after decompression).
        expected: u64,
        /// Bytes it holds.
        found: u64,
    },

    /// A file is longer than its header says it should be.
    #[error(
        "{} has trailing data: expected {expected} bytes, found {found}",
        path.display()
    )]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Bytes the file should hold (after decompression).
        expected: u64,
        /// Bytes it holds.
        found: u64,
    },

    /// The image and label files of one split disagree on the number of examples.
    #[error(
        "image/label count mismatch: {} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Number of images in it.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Number of labels in it.
        labels: usize,
    },

    /// An IDX image file holds images of the wrong size for the dataset.
    #[error(
        "{}: wrong image size: {dataset} images are {}x{}, but the file holds {}x{} images",
        path.display(),
        expected.0,
        expected.1,
        found.0,
        found.1
    )]
    ImageSize {
        /// The file.
        path: PathBuf,
        /// The dataset being loaded.
        dataset: DatasetKind,
        /// (rows, cols) the dataset has.
        expected: (usize, usize),
        /// (rows, cols) the file declares.
        found: (usize, usize),
    },

    /// A label is not a valid class index.
    #[error(
        "{}: label out of range: label {value} at index {index}, but the dataset has {classes} classes",
        path.display()
    )]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Example index (0-based) within the file.
        index: usize,
        /// The label found.
        value: u8,
        /// Number of classes of the dataset.
        classes: usize,
    },

    /// A CIFAR binary file's size is not a whole number of records.
    #[error(
        "{}: wrong file size: {len} bytes is not a multiple of the {record_size}-byte {dataset} record size",
        path.display()
    )]
    RecordSize {
        /// The file.
        path: PathBuf,
        /// The dataset whose format was expected.
        dataset: DatasetKind,
        /// File size in bytes.
        len: u64,
        /// Size of one record in bytes.
        record_size: usize,
    },

    /// A CIFAR reader was asked to read a dataset that is not stored as CIFAR records.
    #[error("{0} is not a CIFAR dataset; CIFAR records exist for cifar10 and cifar100 only")]
    NotCifar(DatasetKind),

    /// No directory holding the dataset was found.
    #[error("{}", not_found_message(*dataset, looked))]
    NotFound {
        /// The dataset searched for.
        dataset: DatasetKind,
        /// Every directory looked at, in order, with where it came from.
        looked: Vec<(PathBuf, &'static str)>,
    },

    /// A split was built from image bytes and labels that do not fit together.
    #[error(
        "split of {labels} labels with images of shape {shape:?} needs {} image bytes, got {images}",
        labels * shape.0 * shape.1 * shape.2
    )]
    SplitShape {
        /// Length of the image byte vector.
        images: usize,
        /// Number of labels.
        labels: usize,
        /// (C, H, W) of one image.
        shape: (usize, usize, usize),
    },

    /// A batch size of 0, or one larger than the split.
    #[error("invalid batch size {batch_size}: must be between 1 and the split size {len}")]
    InvalidBatchSize {
        /// The batch size asked for.
        batch_size: usize,
        /// Number of examples in the split.
        len: usize,
    },

    /// Building a tensor failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn not_found_message(dataset: DatasetKind, looked: &[(PathBuf, &'static str)]) -> String {
    use std::fmt::Write as _;
    let mut msg = format!("{dataset} data not found. Looked in:\n");
    for (path, origin) in looked {
        // Writing to a String cannot fail.
        let _ = writeln!(msg, "  - {} ({origin})", path.display());
    }
    let _ = writeln!(
        msg,
        "A directory counts if it holds {}.",
        crate::locate::expected_files(dataset)
    );
    msg.push_str("To get the data: ");
    if dataset == DatasetKind::FashionMnist {
        msg.push_str(
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs \
             /usr/share/datasets/fashion-mnist), or ",
        );
    }
    let _ = write!(
        msg,
        "`cargo xtask download {dataset}`; \
         or point --data or TULIP_DATA at a directory that holds it."
    );
    msg
}
