//! The files of a run directory (docs/method.md §7) and the CSV writer behind them.
//!
//! ```text
//! config.toml              resolved configuration (read back by --resume, eval, attack),
//!                          its first line a SHA-256 of the rest
//! lock                     held (flock) by the one process training the run; its pid
//! training.csv             index, time, loss, lr, penalty values — every log interval
//! test.csv                 epoch, time, test loss/error, train loss/error, tikhonov, lr
//! checkpoint.safetensors   last state (model, optimizer momentum, position)
//! best.safetensors         model with the lowest test error so far
//! train.log                log of the run (written by the binary)
//! ```
//! Checkpoints are written atomically; CSV rows are flushed as they are written, so a
//! crash loses at most the row being written.
//!
//! One process at a time trains a run: it holds an exclusive `flock` on `lock` for as
//! long as it runs. The kernel drops the lock when the process ends however it ends, so a
//! lock is never stale; the pid inside only names the holder in the error message.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::{Result, TrainError};

/// File names inside a run directory.
pub mod files {
    /// Resolved configuration.
    pub const CONFIG: &str = "config.toml";
    /// Per-step log.
    pub const TRAINING_CSV: &str = "training.csv";
    /// Per-epoch log.
    pub const TEST_CSV: &str = "test.csv";
    /// Last checkpoint.
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// Best checkpoint by test error.
    pub const BEST: &str = "best.safetensors";
    /// Log file.
    pub const LOG: &str = "train.log";
    /// Lock held by the process that trains the run.
    pub const LOCK: &str = "lock";
}

/// The first line of `config.toml`, before the SHA-256 of the lines after it.
const CONFIG_HASH_LINE: &str = "# sha256 of the lines below: ";

/// SHA-256, in hex, of a text.
fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `config.toml`'s text: the hash line, then the configuration.
fn config_file_text(config: &TrainConfig) -> Result<String> {
    let body = config.to_toml()?;
    Ok(format!("{CONFIG_HASH_LINE}{}\n{body}", sha256_hex(&body)))
}

/// Whether a `config.toml` text was changed since it was written: its first line's hash
/// differs from the rest's. A file without the hash line (written by an older version)
/// counts as unchanged.
fn config_edited(text: &str) -> bool {
    match text
        .split_once('\n')
        .and_then(|(first, body)| Some((first.strip_prefix(CONFIG_HASH_LINE)?, body)))
    {
        Some((hash, body)) => hash.trim() != sha256_hex(body),
        None => false,
    }
}

/// The exclusive right to train a run, held until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// A run directory on disk.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates `path` (and its parents), takes its lock and writes the configuration
    /// into it.
    ///
    /// # Errors
    /// The directory already holds a run ([`TrainError::RunExists`]) or another process's
    /// lock, or cannot be written.
    pub fn create(path: &Path, config: &TrainConfig) -> Result<(Self, RunLock)> {
        let dir = Self {
            path: path.to_path_buf(),
        };
        std::fs::create_dir_all(path).map_err(|error| TrainError::Io {
            path: path.into(),
            error,
        })?;
        let lock = dir.lock()?;
        if dir.file(files::CONFIG).exists() {
            return Err(TrainError::RunExists { path: path.into() });
        }
        dir.write_config(config)?;
        Ok((dir, lock))
    }

    /// Writes `config.toml` (atomically, with its hash line).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_config(&self, config: &TrainConfig) -> Result<()> {
        let text = config_file_text(config)?;
        let file = self.file(files::CONFIG);
        tulip_models::checkpoint::write_atomic(&file, text.as_bytes())
            .map_err(|error| TrainError::Io { path: file, error })
    }

    /// Whether `config.toml` was edited since the run wrote it (its hash line no longer
    /// matches).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn config_edited(&self) -> Result<bool> {
        let file = self.file(files::CONFIG);
        let text = std::fs::read_to_string(&file).map_err(|error| TrainError::Io {
            path: file.clone(),
            error,
        })?;
        Ok(config_edited(&text))
    }

    /// Takes the run's lock: only one process may train a run at a time.
    ///
    /// # Errors
    /// Another process holds it ([`TrainError::RunInUse`], naming its pid), or the lock
    /// file cannot be written.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.file(files::LOCK);
        let io = |error| TrainError::Io {
            path: path.clone(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                return Err(TrainError::RunInUse {
                    path: self.path.clone(),
                    pid,
                });
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(io(error)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id())
            .and_then(|()| file.flush())
            .map_err(io)?;
        Ok(RunLock { _file: file })
    }

    /// Opens an existing run directory (for resuming, evaluating or attacking).
    ///
    /// # Errors
    /// The directory has no readable `config.toml`.
    pub fn open(path: &Path) -> Result<(Self, TrainConfig)> {
        let dir = Self {
            path: path.to_path_buf(),
        };
        let file = dir.file(files::CONFIG);
        let text = std::fs::read_to_string(&file).map_err(|error| TrainError::Io {
            path: file.clone(),
            error,
        })?;
        let config = TrainConfig::from_toml(&text)
            .map_err(|reason| TrainError::BadRunFile { path: file, reason })?;
        Ok((dir, config))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// Appends rows to a CSV file with a fixed header, flushing each row.
#[derive(Debug)]
pub struct CsvWriter {
    out: csv::Writer<File>,
    path: PathBuf,
    columns: usize,
}

impl CsvWriter {
    /// Opens `path` for appending. A new (or empty) file gets `header`; an existing file
    /// must have the same header (resuming a run), and its rows after `keep_rows` data
    /// rows are dropped, so a resumed run does not repeat rows written after its checkpoint.
    ///
    /// # Errors
    /// I/O failure, or an existing file with another header.
    pub fn open(path: &Path, header: &[&str], keep_rows: Option<usize>) -> Result<Self> {
        let io = |error| TrainError::Io {
            path: path.into(),
            error,
        };
        let header_line = header.join(",");
        if path.exists() {
            let lines: Vec<String> = BufReader::new(File::open(path).map_err(io)?)
                .lines()
                .collect::<std::io::Result<_>>()
                .map_err(io)?;
            if let Some(first) = lines.first() {
                if *first != header_line {
                    return Err(TrainError::BadRunFile {
                        path: path.into(),
                        reason: format!("header {first:?} differs from {header_line:?}"),
                    });
                }
                if let Some(keep) = keep_rows {
                    let kept: Vec<&String> = lines.iter().take(keep + 1).collect();
                    let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
                    tulip_models::checkpoint::write_atomic(path, text.as_bytes()).map_err(io)?;
                }
                let file = OpenOptions::new().append(true).open(path).map_err(io)?;
                return Ok(Self {
                    out: csv::Writer::from_writer(file),
                    path: path.into(),
                    columns: header.len(),
                });
            }
        }
        let mut writer = Self {
            out: csv::Writer::from_writer(File::create(path).map_err(io)?),
            path: path.into(),
            columns: header.len(),
        };
        writer.record(header)?;
        Ok(writer)
    }

    /// Writes one row of numbers (full precision, shortest round-trip form).
    ///
    /// # Errors
    /// I/O failure.
    pub fn row(&mut self, values: &[f64]) -> Result<()> {
        debug_assert_eq!(
            values.len(),
            self.columns,
            "row width differs from the header"
        );
        self.record(values.iter().map(f64::to_string))
    }

    /// Writes one line of cells and flushes it to the file, so that a crash loses no row.
    fn record<I: IntoIterator<Item = T>, T: AsRef<[u8]>>(&mut self, cells: I) -> Result<()> {
        self.out
            .write_record(cells)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.flush())
            .map_err(|error| TrainError::Io {
                path: self.path.clone(),
                error,
            })
    }
}

/// Reads a numeric CSV written by [`CsvWriter`]: the header and the rows.
///
/// # Errors
/// I/O failure or a non-numeric cell.
pub fn read_csv(path: &Path) -> Result<(Vec<String>, Vec<Vec<f64>>)> {
    let bad = |reason: String| TrainError::BadRunFile {
        path: path.into(),
        reason,
    };
    let file = File::open(path).map_err(|error| TrainError::Io {
        path: path.into(),
        error,
    })?;
    let mut reader = csv::ReaderBuilder::new().from_reader(file);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(String::from)
        .collect();
    if header.iter().all(String::is_empty) {
        return Err(bad("empty file".into()));
    }
    let rows = reader
        .records()
        .enumerate()
        .map(|(i, record)| {
            let record = record.map_err(|e| bad(e.to_string()))?;
            record
                .iter()
                .map(|c| {
                    c.parse::<f64>()
                        .map_err(|_| bad(format!("row {}: {c:?} is not a number", i + 1)))
                })
                .collect::<Result<Vec<f64>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((header, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tulip_data::DatasetKind;
    use tulip_models::{Architecture, ModelConfig};

    fn config() -> TrainConfig {
        let kind = DatasetKind::FashionMnist;
        let model = ModelConfig::new(Architecture::ResNet8, kind.classes(), kind.image_shape());
        TrainConfig::new(kind, model)
    }

    #[test]
    fn an_edited_config_is_detected_and_an_untouched_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _lock) = RunDir::create(&tmp.path().join("run"), &config()).unwrap();
        assert!(!dir.config_edited().unwrap());
        let path = dir.file(files::CONFIG);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("lr = 0.1"), "{text}");
        std::fs::write(&path, text.replace("lr = 0.1", "lr = 0.2")).unwrap();
        assert!(dir.config_edited().unwrap());
        // Written again by the run (after an allowed change), it is clean again.
        dir.write_config(&config()).unwrap();
        assert!(!dir.config_edited().unwrap());
        // A file of an older version, without the hash line, reads as unchanged.
        assert!(!config_edited(&config().to_toml().unwrap()));
    }

    #[test]
    fn one_lock_holder_at_a_time_and_the_lock_is_free_again_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, lock) = RunDir::create(&tmp.path().join("run"), &config()).unwrap();
        match dir.lock() {
            Err(TrainError::RunInUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second lock was granted: {other:?}"),
        }
        drop(lock);
        let _again = dir.lock().expect("free after the holder let go");
    }

    #[test]
    fn a_directory_with_a_run_is_not_created_again() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run");
        drop(RunDir::create(&path, &config()).unwrap());
        let err = RunDir::create(&path, &config()).unwrap_err();
        assert!(matches!(err, TrainError::RunExists { .. }), "{err}");
    }
}
