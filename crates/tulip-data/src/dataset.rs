//! Which datasets exist, and a dataset held in memory.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{cifar, idx, sums, DataError, Result};

/// The datasets Tulip-rs can train and evaluate on.
///
/// Serialised (serde and clap) by [`DatasetKind::name`]: `fashion-mnist`, `mnist`,
/// `cifar10`, `cifar100`.
#[non_exhaustive]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Zalando's Fashion-MNIST: 28×28 grey clothing images, 10 classes (the default).
    FashionMnist,
    /// LeCun's MNIST handwritten digits: 28×28 grey, 10 classes.
    Mnist,
    /// CIFAR-10: 32×32 colour images, 10 classes.
    Cifar10,
    /// CIFAR-100 (fine labels): 32×32 colour images, 100 classes.
    Cifar100,
}

impl DatasetKind {
    /// Every dataset, in declaration order.
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
    ];

    /// The dataset's name as used on the command line, in config files and as the
    /// directory name under a data root.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
        }
    }

    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist | DatasetKind::Cifar10 => 10,
            DatasetKind::Cifar100 => 100,
        }
    }

    /// Shape of one image as (channels, height, width).
    pub fn image_shape(self) -> (usize, usize, usize) {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist => (1, 28, 28),
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => (3, 32, 32),
        }
    }

    /// Number of (training, test) examples: 60,000 and 10,000 for Fashion-MNIST and
    /// MNIST, 50,000 and 10,000 for CIFAR-10 and CIFAR-100. [`load`] refuses files that
    /// hold any other number.
    pub fn split_sizes(self) -> (usize, usize) {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist => (60_000, 10_000),
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => (50_000, 10_000),
        }
    }

    /// Whether the dataset is stored as IDX files (the MNIST family).
    pub(crate) fn is_idx(self) -> bool {
        matches!(self, DatasetKind::FashionMnist | DatasetKind::Mnist)
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One split (train or test) held in memory as raw bytes.
///
/// Bytes are cheap to hold (47 MB for Fashion-MNIST's training split) and are converted
/// to `f32` in `[0, 1]` one batch at a time by the [`Loader`](crate::Loader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// `N*C*H*W` pixel bytes in NCHW order, raw `0..=255`.
    pub images: Vec<u8>,
    /// `N` class labels.
    pub labels: Vec<u8>,
    /// Shape of one image, (C, H, W).
    pub shape: (usize, usize, usize),
}

impl Split {
    /// A split from image bytes (NCHW) and labels, checking that their sizes agree.
    ///
    /// # Errors
    /// [`DataError::SplitShape`] if `images.len() != labels.len() * C * H * W`.
    pub fn new(images: Vec<u8>, labels: Vec<u8>, shape: (usize, usize, usize)) -> Result<Self> {
        if images.len() != labels.len() * shape.0 * shape.1 * shape.2 {
            return Err(DataError::SplitShape {
                images: images.len(),
                labels: labels.len(),
                shape,
            });
        }
        Ok(Split {
            images,
            labels,
            shape,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of bytes (pixels × channels) of one image.
    pub fn image_len(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }

    /// The raw bytes of image `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Keep the first `n` examples (all of them if `n >= self.len()`).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.images.truncate(n * self.image_len());
        self.labels.truncate(n);
    }

    /// Image `i` as `C*H*W` floats in `[0, 1]` (byte / 255).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn image_f32(&self, i: usize) -> Vec<f32> {
        self.image(i)
            .iter()
            .map(|&b| f32::from(b) / 255.0)
            .collect()
    }

    /// How many examples carry each label `0..classes`. Labels `>= classes` are not
    /// counted (they cannot occur in a split returned by [`load`]).
    pub fn label_histogram(&self, classes: usize) -> Vec<usize> {
        let mut hist = vec![0; classes];
        for &l in &self.labels {
            if let Some(h) = hist.get_mut(usize::from(l)) {
                *h += 1;
            }
        }
        hist
    }
}

/// A dataset: both splits in memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Which dataset this is.
    pub kind: DatasetKind,
    /// The training split.
    pub train: Split,
    /// The test split.
    pub test: Split,
}

/// Load both splits of `kind` from `dir`, a directory found by [`locate`](crate::locate).
///
/// For the IDX datasets `dir` holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each raw or with `.gz` appended
/// (the raw file wins if both exist). For CIFAR-10 `dir` holds `data_batch_1.bin` ..
/// `data_batch_5.bin` and `test_batch.bin`, directly or in `cifar-10-batches-bin/`; for
/// CIFAR-100 `train.bin` and `test.bin`, directly or in `cifar-100-binary/`.
///
/// Every file must hold the number of examples the real one has (see
/// [`DatasetKind::split_sizes`]): 60,000 training and 10,000 test images and labels for
/// the IDX datasets, 10,000 records in each CIFAR-10 batch file, 50,000 in CIFAR-100's
/// `train.bin` and 10,000 in its `test.bin`. A shorter or longer file (an empty one, a
/// partial copy) is an error, never a smaller dataset used silently.
///
/// If `dir` holds the `SHA256SUMS` record the downloader leaves (see
/// [`download`](crate::download)), every file read that it lists must still have the
/// recorded digest ([`DataError::ChangedSinceDownload`]); without the record (data put
/// there by the user) the files are read as they are.
///
/// # Errors
/// A file that changed since it was downloaded and verified, a damaged `SHA256SUMS`
/// ([`DataError::SumsFile`]), a missing or unreadable file, a corrupt gzip stream, a wrong
/// IDX magic number or image size, a truncated file, a CIFAR file that is not a whole
/// number of records, a file with the wrong number of examples
/// ([`DataError::RecordCount`]), or a label outside `0..kind.classes()`; each error names
/// the file.
pub fn load(kind: DatasetKind, dir: &Path) -> Result<Dataset> {
    sums::verify(kind, dir, &files_read(kind, dir))?;
    let (train_len, test_len) = kind.split_sizes();
    let (train, test) = if kind.is_idx() {
        (
            load_idx_split(kind, dir, "train", train_len)?,
            load_idx_split(kind, dir, "t10k", test_len)?,
        )
    } else {
        let dir = cifar::resolve_dir(kind, dir);
        let (train_files, test_file) = cifar::split_files(kind);
        let per_train_file = train_len / train_files.len();
        let mut train = Split::new(
            Vec::with_capacity(train_len * cifar::PIXELS),
            Vec::with_capacity(train_len),
            kind.image_shape(),
        )?;
        for f in train_files {
            let (images, labels) = cifar::read_counted(&dir.join(f), kind, per_train_file)?;
            train.images.extend_from_slice(&images);
            train.labels.extend_from_slice(&labels);
        }
        let (images, labels) = cifar::read_counted(&dir.join(test_file), kind, test_len)?;
        (train, Split::new(images, labels, kind.image_shape())?)
    };
    tracing::info!(
        dataset = kind.name(),
        dir = %dir.display(),
        train = train.len(),
        test = test.len(),
        "loaded dataset"
    );
    Ok(Dataset { kind, train, test })
}

/// The files [`load`] reads from `dir`, by the same rules.
fn files_read(kind: DatasetKind, dir: &Path) -> Vec<PathBuf> {
    if kind.is_idx() {
        ["train", "t10k"]
            .iter()
            .flat_map(|prefix| {
                [
                    idx_file(dir, &format!("{prefix}-images-idx3-ubyte")),
                    idx_file(dir, &format!("{prefix}-labels-idx1-ubyte")),
                ]
            })
            .collect()
    } else {
        let files_dir = cifar::resolve_dir(kind, dir);
        let (train_files, test_file) = cifar::split_files(kind);
        train_files
            .iter()
            .chain([&test_file])
            .map(|f| files_dir.join(f))
            .collect()
    }
}

/// The path of an IDX file in `dir`: the raw file if present, else the `.gz` one if
/// present, else the raw name (so that the "cannot read" error names the expected file).
pub(crate) fn idx_file(dir: &Path, stem: &str) -> PathBuf {
    let raw = dir.join(stem);
    if raw.is_file() {
        return raw;
    }
    let gz = dir.join(format!("{stem}.gz"));
    if gz.is_file() {
        gz
    } else {
        raw
    }
}

/// One split of an IDX dataset: `<prefix>-images-idx3-ubyte` and
/// `<prefix>-labels-idx1-ubyte`, each of which must hold exactly `expected` examples (so
/// the two also agree).
fn load_idx_split(kind: DatasetKind, dir: &Path, prefix: &str, expected: usize) -> Result<Split> {
    let images_path = idx_file(dir, &format!("{prefix}-images-idx3-ubyte"));
    let labels_path = idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"));
    let (images, n, rows, cols) = idx::read_images(&images_path)?;
    let (c, h, w) = kind.image_shape();
    if (rows, cols) != (h, w) {
        return Err(DataError::ImageSize {
            path: images_path,
            dataset: kind,
            expected: (h, w),
            found: (rows, cols),
        });
    }
    check_count(&images_path, kind, "images", expected, n)?;
    let labels = idx::read_labels(&labels_path)?;
    check_count(&labels_path, kind, "labels", expected, labels.len())?;
    check_labels(&labels_path, &labels, kind.classes())?;
    Split::new(images, labels, (c, h, w))
}

/// [`DataError::RecordCount`] unless `found == expected`.
pub(crate) fn check_count(
    path: &Path,
    dataset: DatasetKind,
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(DataError::RecordCount {
        path: path.to_path_buf(),
        dataset,
        what,
        expected,
        found,
    })
}

/// Check every label is below `classes`.
pub(crate) fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<()> {
    match labels.iter().position(|&l| usize::from(l) >= classes) {
        None => Ok(()),
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            value: labels[index],
            classes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_shapes() {
        let names: Vec<_> = DatasetKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(names, ["fashion-mnist", "mnist", "cifar10", "cifar100"]);
        assert_eq!(DatasetKind::Cifar100.classes(), 100);
        assert_eq!(DatasetKind::Mnist.image_shape(), (1, 28, 28));
        assert_eq!(DatasetKind::Cifar10.image_shape(), (3, 32, 32));
    }

    #[test]
    fn clap_and_serde_names_match_name() {
        use clap::ValueEnum;
        for k in DatasetKind::ALL {
            let pv = k.to_possible_value().expect("no skipped variants");
            assert_eq!(pv.get_name(), k.name());
            assert_eq!(DatasetKind::from_str(k.name(), false), Ok(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<DatasetKind>(&json).unwrap(), k);
        }
    }

    fn split3() -> Split {
        // Three 1x1x2 images.
        Split::new(vec![0, 255, 10, 20, 30, 40], vec![2, 0, 2], (1, 1, 2)).unwrap()
    }

    #[test]
    fn split_accessors() {
        let mut s = split3();
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert_eq!(s.image_f32(0), vec![0.0, 1.0]);
        assert_eq!(s.image(2), &[30, 40]);
        assert_eq!(s.label_histogram(3), vec![1, 0, 2]);
        assert_eq!(s.label_histogram(2), vec![1, 0]);
        s.truncate(2);
        assert_eq!(s.len(), 2);
        assert_eq!(s.images, vec![0, 255, 10, 20]);
        s.truncate(10);
        assert_eq!(s.len(), 2);
        s.truncate(0);
        assert!(s.is_empty() && s.images.is_empty());
    }

    #[test]
    fn split_new_checks_sizes() {
        let err = Split::new(vec![0; 5], vec![0, 1], (1, 1, 2)).unwrap_err();
        assert!(matches!(err, DataError::SplitShape { .. }), "{err}");
        assert!(err.to_string().contains("needs 4 image bytes"), "{err}");
    }
}
