//! The files of a run directory (SPEC §7) and the CSV writer behind them.
//!
//! ```text
//! config.toml              resolved configuration (read back by --resume, eval, attack)
//! training.csv             index, time, loss, lr, penalty values — every log interval
//! test.csv                 epoch, time, test loss/error, train loss/error, tikhonov, lr
//! checkpoint.safetensors   last state (model, optimizer momentum, position)
//! best.safetensors         model with the lowest test error so far
//! train.log                log of the run (written by the binary)
//! ```
//! Checkpoints are written atomically; CSV rows are flushed as they are written, so a
//! crash loses at most the row being written.

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
}

/// A run directory on disk.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates `path` (and its parents) and writes the configuration into it.
    ///
    /// # Errors
    /// The directory already holds a run, or cannot be written.
    pub fn create(path: &Path, config: &TrainConfig) -> Result<Self> {
        let dir = Self {
            path: path.to_path_buf(),
        };
        if dir.file(files::CONFIG).exists() {
            return Err(TrainError::InvalidConfig(format!(
                "--log-dir {}: a run already exists there; use --resume {} to continue it or choose another directory",
                path.display(),
                path.display()
            )));
        }
        std::fs::create_dir_all(path).map_err(|error| TrainError::Io {
            path: path.into(),
            error,
        })?;
        let text = config.to_toml()?;
        let file = dir.file(files::CONFIG);
        tulip_models::checkpoint::write_atomic(&file, text.as_bytes())
            .map_err(|error| TrainError::Io { path: file, error })?;
        Ok(dir)
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
    file: File,
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
                    file,
                    path: path.into(),
                    columns: header.len(),
                });
            }
        }
        let mut file = File::create(path).map_err(io)?;
        writeln!(file, "{header_line}").map_err(io)?;
        Ok(Self {
            file,
            path: path.into(),
            columns: header.len(),
        })
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
        let line: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        writeln!(self.file, "{}", line.join(","))
            .and_then(|()| self.file.flush())
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
    let text = std::fs::read_to_string(path).map_err(|error| TrainError::Io {
        path: path.into(),
        error,
    })?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| bad("empty file".into()))?
        .split(',')
        .map(String::from)
        .collect();
    let rows = lines
        .enumerate()
        .map(|(i, l)| {
            l.split(',')
                .map(|c| {
                    c.parse::<f64>()
                        .map_err(|_| bad(format!("row {}: {c:?} is not a number", i + 1)))
                })
                .collect::<Result<Vec<f64>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((header, rows))
}
