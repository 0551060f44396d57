//! Finding a dataset's directory on disk.

use std::path::{Path, PathBuf};

use crate::dataset::idx_file;
use crate::{cifar, DataError, DatasetKind, Result};

/// Where the Debian/Ubuntu package `dataset-fashion-mnist` installs its files.
pub const SYSTEM_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Environment variable naming a data root (holding `<name>/` directories) or a dataset
/// directory.
pub const TULIP_DATA_ENV: &str = "TULIP_DATA";

/// The places [`locate`] searches, made explicit so they can be tested and shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPaths {
    /// A directory given by the user (`--data DIR`): the dataset directory itself or a
    /// root holding `<name>/`.
    pub explicit: Option<PathBuf>,
    /// The value of `$TULIP_DATA`, if set and not empty.
    pub tulip_data: Option<PathBuf>,
    /// The directory under which `data/<name>` is tried (the working directory).
    pub cwd: PathBuf,
    /// Where the system package keeps Fashion-MNIST (tried for Fashion-MNIST only).
    pub system_fashion_mnist: PathBuf,
}

impl SearchPaths {
    /// The search paths of this process: `explicit`, `$TULIP_DATA`, `.` and
    /// [`SYSTEM_FASHION_MNIST`].
    pub fn from_env(explicit: Option<&Path>) -> Self {
        SearchPaths {
            explicit: explicit.map(Path::to_path_buf),
            tulip_data: std::env::var_os(TULIP_DATA_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            cwd: PathBuf::from("."),
            system_fashion_mnist: PathBuf::from(SYSTEM_FASHION_MNIST),
        }
    }

    /// The directories tried for `kind`, in order, each with where it comes from.
    ///
    /// With an explicit directory only it (and `<explicit>/<name>`) are tried: a
    /// directory the user named that does not hold the data is an error, not a reason to
    /// silently use a copy found elsewhere.
    pub fn candidates(&self, kind: DatasetKind) -> Vec<(PathBuf, &'static str)> {
        let name = kind.name();
        if let Some(dir) = &self.explicit {
            return vec![(dir.clone(), "--data"), (dir.join(name), "--data")];
        }
        let mut out = Vec::new();
        if let Some(root) = &self.tulip_data {
            out.push((root.join(name), "$TULIP_DATA"));
            out.push((root.clone(), "$TULIP_DATA"));
        }
        out.push((self.cwd.join("data").join(name), "working directory"));
        if kind == DatasetKind::FashionMnist {
            out.push((
                self.system_fashion_mnist.clone(),
                "package dataset-fashion-mnist",
            ));
        }
        out
    }

    /// The first candidate directory that holds `kind`'s files.
    ///
    /// # Errors
    /// [`DataError::NotFound`], listing every directory tried.
    pub fn locate(&self, kind: DatasetKind) -> Result<PathBuf> {
        let looked = self.candidates(kind);
        match looked.iter().find(|(dir, _)| holds(kind, dir)) {
            Some((dir, origin)) => {
                tracing::debug!(dataset = kind.name(), dir = %dir.display(), origin, "found dataset");
                Ok(dir.clone())
            }
            None => Err(DataError::NotFound {
                dataset: kind,
                looked,
            }),
        }
    }
}

/// Find the directory holding `kind`.
///
/// Looks, in order, in `explicit` (e.g. `--data DIR`: that directory, then `DIR/<name>`;
/// when given, nothing else is tried), then `$TULIP_DATA/<name>`, `$TULIP_DATA`,
/// `./data/<name>` and, for Fashion-MNIST only, [`SYSTEM_FASHION_MNIST`]. A directory
/// counts if it holds the dataset's files: for the IDX datasets all four files, raw or
/// `.gz`; for CIFAR-10 `data_batch_1.bin` directly or in `cifar-10-batches-bin/`; for
/// CIFAR-100 `train.bin` directly or in `cifar-100-binary/`.
///
/// # Errors
/// [`DataError::NotFound`], listing every directory tried and how to get the data
/// (`sudo apt-get install dataset-fashion-mnist`, `cargo xtask download <name>`).
pub fn locate(kind: DatasetKind, explicit: Option<&Path>) -> Result<PathBuf> {
    SearchPaths::from_env(explicit).locate(kind)
}

const IDX_STEMS: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Whether `dir` holds the files of `kind`.
pub(crate) fn holds(kind: DatasetKind, dir: &Path) -> bool {
    if kind.is_idx() {
        IDX_STEMS.iter().all(|s| idx_file(dir, s).is_file())
    } else {
        cifar::holds(kind, dir)
    }
}

/// Human-readable description of the files that make a directory count.
pub(crate) fn expected_files(kind: DatasetKind) -> String {
    if kind.is_idx() {
        format!("{} (each raw or .gz)", IDX_STEMS.join(", "))
    } else {
        let first = cifar::split_files(kind).0[0];
        format!("{first} (directly or in {}/)", cifar::archive_dir(kind))
    }
}
