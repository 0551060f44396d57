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

    /// A file holds another number of examples than the real file of that name: an empty
    /// or partial copy, or a different file under the expected name. (The image and label
    /// files of an IDX split are each checked against the same count, so they also agree.)
    #[error(
        "{}: wrong number of {what} for {dataset}: expected {expected}, found {found} \
         (the file is incomplete, or is not the {dataset} file of that name)",
        path.display()
    )]
    RecordCount {
        /// The file.
        path: PathBuf,
        /// The dataset being loaded.
        dataset: DatasetKind,
        /// What is counted: "records" (CIFAR), "images" or "labels" (IDX).
        what: &'static str,
        /// Number the real file holds.
        expected: usize,
        /// Number this file holds (for IDX, as its header declares).
        found: usize,
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
    #[cfg(feature = "tensors")]
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    // ---- downloads (crate::download) ----
    /// The server of a download could not be reached: no network, a DNS failure, a refused
    /// connection or a connect timeout.
    #[error(
        "could not connect to download {url}: {error} (no network? A mirror can be set \
         with {mirror_env}=URL)",
        mirror_env = crate::download::MIRROR_ENV
    )]
    Connect {
        /// The URL requested.
        url: String,
        /// What the HTTP client said.
        error: String,
    },

    /// The server answered a download with an HTTP error status.
    #[error("download of {url} failed: HTTP status {status} {reason}")]
    HttpStatus {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The status line's reason phrase.
        reason: String,
    },

    /// A download failed midway for a reason other than the connection closing early.
    #[error("download of {url} failed: {error}")]
    Transfer {
        /// The URL requested.
        url: String,
        /// What went wrong.
        error: String,
    },

    /// The connection closed before the whole file had arrived.
    #[error(
        "download of {url} is truncated: the transfer broke off after {received} of \
         {expected} bytes; the partial file was deleted"
    )]
    DownloadTruncated {
        /// The URL requested.
        url: String,
        /// Bytes received.
        received: u64,
        /// Bytes announced (Content-Length) or, without that, listed in the manifest.
        expected: u64,
    },

    /// A downloaded file does not have the size the manifest lists.
    #[error(
        "{file} (from {url}) has the wrong size: the manifest lists {expected} bytes, \
         {found} arrived; the file was deleted"
    )]
    DownloadSize {
        /// The file's name.
        file: String,
        /// Where it came from.
        url: String,
        /// Size listed in the manifest.
        expected: u64,
        /// Size received (or received so far, when the transfer overran).
        found: u64,
    },

    /// A downloaded file's SHA-256 digest is not the one the manifest lists.
    #[error(
        "{file} (from {url}) failed SHA-256 verification, so it is corrupt or not the \
         expected file: expected {expected}, got {found}; the file was deleted"
    )]
    Checksum {
        /// The file's name.
        file: String,
        /// Where it came from.
        url: String,
        /// Digest listed in the manifest.
        expected: String,
        /// Digest of what arrived.
        found: String,
    },

    /// The manifest has no digest for a file: it is refused rather than used unverified.
    #[error(
        "the dataset manifest has no SHA-256 digest for {file} of {dataset}: refusing to \
         download a file that cannot be verified (add its digest to data/manifest.toml)"
    )]
    NoChecksum {
        /// The dataset.
        dataset: DatasetKind,
        /// The file's name.
        file: String,
    },

    /// The dataset manifest does not parse or lists something impossible.
    #[error("invalid dataset manifest ({origin}): {error}")]
    Manifest {
        /// Which manifest (a path, or "data/manifest.toml (built in)").
        origin: String,
        /// What is wrong.
        error: String,
    },

    /// The manifest lists no file for a dataset.
    #[error("the dataset manifest lists no files for {0}")]
    NotInManifest(DatasetKind),

    /// A downloaded archive could not be unpacked.
    #[error("cannot unpack {}: {error}; nothing was kept", path.display())]
    Unpack {
        /// The archive.
        path: PathBuf,
        /// What went wrong.
        error: String,
    },

    /// A verified archive unpacked without a file the dataset needs.
    #[error("{archive} unpacked without {member}: not the expected archive; nothing was kept")]
    MissingMember {
        /// The archive's name.
        archive: String,
        /// The file missing from it.
        member: String,
    },

    /// A file or directory could not be written while installing a download.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },

    /// A file the downloader verified and recorded in the dataset directory's
    /// `SHA256SUMS` no longer has the digest recorded there.
    #[error(
        "{}: SHA-256 is {found}, but {} records {expected}: the file changed since it was \
         downloaded and verified (delete it and download it again: `cargo xtask \
         download {dataset}`)",
        path.display(),
        sums.display()
    )]
    ChangedSinceDownload {
        /// The file.
        path: PathBuf,
        /// The record that lists it.
        sums: PathBuf,
        /// The dataset being loaded.
        dataset: DatasetKind,
        /// Digest recorded when it was downloaded.
        expected: String,
        /// Digest it has now.
        found: String,
    },

    /// The `SHA256SUMS` record the downloader leaves in a dataset directory does not parse.
    #[error(
        "{} line {line}: {error} (the record of a verified download is damaged; delete \
         the dataset directory and download it again)",
        path.display()
    )]
    SumsFile {
        /// The record.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        error: String,
    },

    /// A dataset was not found, and fetching it failed as well.
    #[error(
        "{dataset} data not found, and downloading it into {} failed: {download}\n{not_found}",
        root.display()
    )]
    DownloadFailed {
        /// The dataset.
        dataset: DatasetKind,
        /// The data root it was to be downloaded into.
        root: PathBuf,
        /// Why the download failed.
        download: Box<DataError>,
        /// The [`DataError::NotFound`] that started the download: where it was looked for
        /// and how else to get it.
        not_found: Box<DataError>,
    },
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
