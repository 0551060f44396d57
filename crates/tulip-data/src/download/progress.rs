//! Reporting a download's progress: a trait the downloader calls, a silent
//! implementation and an `indicatif` progress bar.

use indicatif::{ProgressBar, ProgressStyle};

/// What the downloader tells its caller while it works.
///
/// The downloader only calls these methods; how (and whether) anything is shown is the
/// caller's choice: [`NoProgress`] for quiet or machine-read output and tests,
/// [`BarProgress`] for a terminal.
pub trait Progress {
    /// A transfer of `file` from `url` starts; `size` is its expected size if known.
    fn file_started(&mut self, file: &str, url: &str, size: Option<u64>);
    /// `bytes` more bytes of the current file arrived.
    fn advanced(&mut self, bytes: u64);
    /// The current file arrived completely and was verified.
    fn file_finished(&mut self);
    /// A one-line remark (a file already present, an archive being unpacked, ...).
    fn note(&mut self, message: &str);
}

/// Shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn file_started(&mut self, _: &str, _: &str, _: Option<u64>) {}
    fn advanced(&mut self, _: u64) {}
    fn file_finished(&mut self) {}
    fn note(&mut self, _: &str) {}
}

/// One progress bar per file on stderr (bytes, rate, time left), and notes as plain
/// lines. `indicatif` hides the bar when stderr is not a terminal; notes and the line
/// left by each finished file are printed either way.
#[derive(Debug, Default)]
pub struct BarProgress {
    bar: Option<ProgressBar>,
    file: String,
}

impl BarProgress {
    /// A reporter drawing on stderr.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Progress for BarProgress {
    fn file_started(&mut self, file: &str, url: &str, size: Option<u64>) {
        if let Some(old) = self.bar.take() {
            old.finish_and_clear();
        }
        eprintln!("downloading {url}");
        let bar = match size {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix} {spinner} {bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_prefix(file.to_owned());
        self.file = file.to_owned();
        self.bar = Some(bar);
    }

    fn advanced(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn file_finished(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            eprintln!("{}: {} bytes, SHA-256 verified", self.file, bar.position());
        }
    }

    fn note(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}

impl Drop for BarProgress {
    /// A failed transfer leaves no half-drawn bar behind the error message.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
