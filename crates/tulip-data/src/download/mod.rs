//! Fetching datasets from their canonical sources, verified by SHA-256.
//!
//! What is fetched, from where, and what it must hash to is the [`Manifest`] committed as
//! `data/manifest.toml` (compiled in). [`Downloader::fetch`] puts a dataset under
//! `<root>/<name>/` (`root` is usually `./data`), in the layout [`locate`](crate::locate)
//! and [`load`](crate::load) read: the gzipped IDX files as they are, the CIFAR archives
//! extracted (`cifar-10-batches-bin/`, `cifar-100-binary/`) and then deleted.
//!
//! # All or nothing
//!
//! Files are fetched into a staging directory `<root>/.<name>.partial/`, hashed while
//! they stream in, checked against the manifest's size and digest, unpacked there if
//! they are archives, and only when every missing file of the dataset has arrived intact
//! are they renamed into `<root>/<name>/`. Any failure (HTTP error, no network, a transfer
//! that breaks off, a wrong digest) deletes the staging directory, so a failed download
//! never leaves a half-written dataset for a later run to trip over. A staging directory
//! left by a killed process is deleted by the next attempt.
//!
//! # The record of a download
//!
//! Once a dataset is installed, [`SUMS_FILE`] (`<root>/<name>/SHA256SUMS`, in the format of
//! `sha256sum`) lists the digest of every file the loader may read: the IDX files as the
//! manifest has them, the files unpacked from an archive as hashed after unpacking.
//! [`load`](crate::load) checks the files it reads against it, so a downloaded file that
//! changes afterwards is refused; data without the record (put there by the user) is
//! loaded as before. It is written through a temporary file and a rename, and removed
//! before anything is replaced, so it never lists a digest for a file that is not the one
//! verified.
//!
//! Files already present are not fetched again: a file kept as it is counts if its digest
//! matches (one that does not is fetched again and replaced); an archive counts if all the
//! `members` it unpacks to exist.
//!
//! # Mirrors
//!
//! [`Source::Mirror`] (or `$TULIP_DATA_MIRROR`, see [`Source::from_env`]) fetches every file
//! from `<mirror>/<dataset>/<name>` instead of its canonical URL, with the same
//! verification. `$TULIP_DATA_MANIFEST` names a manifest file to use instead of the
//! committed one (a mirror of re-packed files, or the tests, which serve generated files
//! from a loopback server): files are still only accepted if they match a digest, the
//! environment just chooses which list of digests.
//!
//! Two processes downloading the same dataset into the same root at once are not
//! supported (they share the staging directory).

mod manifest;
mod progress;

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use crate::sums::SUMS_FILE;
pub(crate) use manifest::is_sha256;
pub use manifest::{Manifest, ManifestFile, Unpack};
pub use progress::{BarProgress, NoProgress, Progress};

use crate::{sums, DataError, DatasetKind, Result};

/// Environment variable naming a mirror base URL that replaces every canonical URL (see
/// [`Source::from_env`]).
pub const MIRROR_ENV: &str = "TULIP_DATA_MIRROR";

/// Environment variable naming a manifest file to use instead of the committed one (see
/// [`Manifest::from_env`]).
pub const MANIFEST_ENV: &str = "TULIP_DATA_MANIFEST";

/// Where the data root is when the user named none: `./data`, as `data/README.md` says.
pub const DEFAULT_ROOT: &str = "data";

/// Where files are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Each file's canonical URL from the manifest.
    Canonical,
    /// A base URL under which file `name` of dataset `d` is `<base>/<d>/<name>` (the
    /// dataset level is needed because MNIST and Fashion-MNIST share file names).
    Mirror(String),
}

impl Source {
    /// [`Source::Mirror`] with the value of `$TULIP_DATA_MIRROR` if it is set and not
    /// empty, else [`Source::Canonical`].
    pub fn from_env() -> Self {
        match std::env::var(MIRROR_ENV) {
            Ok(base) if !base.trim().is_empty() => Source::Mirror(base.trim().to_owned()),
            _ => Source::Canonical,
        }
    }

    /// The URL `file` is fetched from.
    pub fn url(&self, file: &ManifestFile) -> String {
        match self {
            Source::Canonical => file.url.clone(),
            Source::Mirror(base) => format!(
                "{}/{}/{}",
                base.trim_end_matches('/'),
                file.dataset.name(),
                file.name
            ),
        }
    }
}

/// What [`Downloader::fetch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The dataset directory, `<root>/<name>`.
    pub dir: PathBuf,
    /// Names of the files downloaded now.
    pub fetched: Vec<String>,
    /// Names of the files that were already there and were not downloaded.
    pub present: Vec<String>,
}

/// Fetches datasets listed in a [`Manifest`] from a [`Source`].
#[derive(Debug)]
pub struct Downloader {
    manifest: Manifest,
    source: Source,
    agent: ureq::Agent,
}

impl Downloader {
    /// A downloader for `manifest`'s files from `source`.
    pub fn new(manifest: Manifest, source: Source) -> Self {
        // Generous timeouts: the files are up to 170 MB, and a stalled connection should
        // end in an error, not hang `tulip train` forever.
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(60))
            .user_agent(concat!("tulip-rs/", env!("CARGO_PKG_VERSION")))
            .build();
        Downloader {
            manifest,
            source,
            agent,
        }
    }

    /// The manifest and the source given by the environment ([`Manifest::from_env`],
    /// [`Source::from_env`]): by default the committed manifest and canonical URLs.
    ///
    /// # Errors
    /// [`DataError::Manifest`] or [`DataError::Io`] if the manifest cannot be read or
    /// does not parse.
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(Manifest::from_env()?, Source::from_env()))
    }

    /// The manifest in use.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The source in use.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Makes sure `<root>/<name>/` holds `kind`'s files, downloading and verifying the
    /// missing ones (see the [module documentation](self)).
    ///
    /// # Errors
    /// [`DataError::NotInManifest`] or [`DataError::NoChecksum`] before anything is
    /// fetched; [`DataError::Connect`], [`DataError::HttpStatus`],
    /// [`DataError::Transfer`], [`DataError::DownloadTruncated`],
    /// [`DataError::DownloadSize`], [`DataError::Checksum`], [`DataError::Unpack`],
    /// [`DataError::MissingMember`] or [`DataError::Write`] for a failed download, in
    /// which case nothing new is left under `root`.
    pub fn fetch(
        &self,
        kind: DatasetKind,
        root: &Path,
        progress: &mut dyn Progress,
    ) -> Result<Report> {
        let files: Vec<&ManifestFile> = self.manifest.files_of(kind).collect();
        if files.is_empty() {
            return Err(DataError::NotInManifest(kind));
        }
        // Refuse up front, so that no file of the dataset is fetched only to be unusable.
        if let Some(f) = files.iter().find(|f| f.sha256.is_none()) {
            return Err(DataError::NoChecksum {
                dataset: kind,
                file: f.name.clone(),
            });
        }
        let dir = root.join(kind.name());
        let mut report = Report {
            dir: dir.clone(),
            fetched: Vec::new(),
            present: Vec::new(),
        };
        let mut missing = Vec::new();
        // Files kept as they are that are present were just checked against the manifest,
        // so the record of this download lists them too.
        let mut verified = sums::Sums::new();
        for f in files {
            if is_present(f, &dir, progress)? {
                report.present.push(f.name.clone());
                if f.unpack == Unpack::None {
                    verified.insert(f.name.clone(), f.sha256.clone().unwrap_or_default());
                }
            } else {
                missing.push(f);
            }
        }
        if missing.is_empty() {
            progress.note(&format!(
                "{kind}: already downloaded and verified in {}",
                dir.display()
            ));
            return Ok(report);
        }

        let made_root = !root.exists();
        let stage = root.join(format!(".{}.partial", kind.name()));
        let result = self.fetch_into(&missing, verified, &stage, &dir, progress);
        // Whatever happened, the staging directory goes: on success it is empty, on
        // failure it holds what must not be kept.
        let _ = std::fs::remove_dir_all(&stage);
        if let Err(e) = result {
            if made_root {
                // Only succeeds if empty: never removes anything that was there before.
                let _ = std::fs::remove_dir(root);
            }
            return Err(e);
        }
        report.fetched = missing.iter().map(|f| f.name.clone()).collect();
        Ok(report)
    }

    /// Downloads `files` into `stage`, then moves the results into `dir` and records them,
    /// with `verified` (digests of files already in `dir` that were checked), in
    /// [`SUMS_FILE`].
    fn fetch_into(
        &self,
        files: &[&ManifestFile],
        mut verified: sums::Sums,
        stage: &Path,
        dir: &Path,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        if stage.exists() {
            std::fs::remove_dir_all(stage).map_err(|error| write_error(stage, error))?;
        }
        std::fs::create_dir_all(stage).map_err(|error| write_error(stage, error))?;
        let mut ready = Vec::new();
        // The record lists every file the loader may read, by its path relative to `dir`.
        for f in files {
            let path = stage.join(&f.name);
            self.download_file(f, &path, progress)?;
            match f.unpack {
                Unpack::None => {
                    // `download_file` checked it against this digest.
                    verified.insert(f.name.clone(), f.sha256.clone().unwrap_or_default());
                    ready.push(path);
                }
                Unpack::TarGz => {
                    progress.note(&format!("unpacking {}", f.name));
                    let out = stage.join(format!("{}.contents", f.name));
                    unpack_tar_gz(&path, &out)?;
                    for m in &f.members {
                        if !out.join(m).is_file() {
                            return Err(DataError::MissingMember {
                                archive: f.name.clone(),
                                member: m.clone(),
                            });
                        }
                    }
                    // The archive is not kept: its contents are what the loader reads, so
                    // they are what is recorded (every unpacked file, not only `members`,
                    // which need only name enough for `locate`).
                    std::fs::remove_file(&path).map_err(|error| write_error(&path, error))?;
                    hash_tree(&out, "", &mut verified)?;
                    for entry in
                        std::fs::read_dir(&out).map_err(|error| write_error(&out, error))?
                    {
                        ready.push(entry.map_err(|error| write_error(&out, error))?.path());
                    }
                }
            }
        }
        // Everything arrived intact: install. Renames within one file system are atomic,
        // and the staging directory is on the same one as `dir` (both are under root).
        std::fs::create_dir_all(dir).map_err(|error| write_error(dir, error))?;
        // Entries of an earlier record stay valid for the files this download leaves alone
        // (an archive already unpacked). The record goes before anything is replaced, so
        // that a process killed midway leaves no stale digest for a replaced file (only
        // no record, which loads the data unchecked), and comes back once all is in place.
        let earlier = sums::read(dir).ok().flatten().unwrap_or_default();
        let record = dir.join(SUMS_FILE);
        if record.exists() {
            std::fs::remove_file(&record).map_err(|error| write_error(&record, error))?;
        }
        for from in ready {
            let Some(name) = from.file_name() else {
                continue;
            };
            let to = dir.join(name);
            // A stale copy is replaced: a file whose digest did not match, or an archive
            // directory that lacked members (a complete one would have been "present").
            if to.is_dir() {
                std::fs::remove_dir_all(&to).map_err(|error| write_error(&to, error))?;
            }
            std::fs::rename(&from, &to).map_err(|error| write_error(&to, error))?;
        }
        for (name, digest) in earlier {
            // A file gone with a replaced archive directory is no longer listed.
            if !verified.contains_key(&name) && dir.join(&name).is_file() {
                verified.insert(name, digest);
            }
        }
        sums::write(dir, &verified)
    }

    /// Streams `f` into `path`, hashing and counting as it arrives, and checks it.
    /// On error the partial file is deleted.
    fn download_file(
        &self,
        f: &ManifestFile,
        path: &Path,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let url = self.source.url(f);
        let result = self.transfer(f, &url, path, progress);
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    fn transfer(
        &self,
        f: &ManifestFile,
        url: &str,
        path: &Path,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let response = self
            .agent
            .get(url)
            // The digest is of the bytes as stored: forbid a transparently re-encoded body.
            .set("Accept-Encoding", "identity")
            .call()
            .map_err(|e| request_error(url, e))?;
        let announced: Option<u64> = response
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok());
        progress.file_started(&f.name, url, announced.or(Some(f.size)));
        let mut body = response.into_reader();
        let mut out = File::create(path).map_err(|error| write_error(path, error))?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let expected = announced.unwrap_or(f.size);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The HTTP client reports a body shorter than its Content-Length this way.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(DataError::DownloadTruncated {
                        url: url.to_owned(),
                        received,
                        expected,
                    })
                }
                Err(e) => {
                    return Err(DataError::Transfer {
                        url: url.to_owned(),
                        error: format!("after {received} bytes: {e}"),
                    })
                }
            };
            received += n as u64;
            if received > f.size {
                // Not the file the manifest means; stop rather than fill the disk.
                return Err(DataError::DownloadSize {
                    file: f.name.clone(),
                    url: url.to_owned(),
                    expected: f.size,
                    found: received,
                });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|error| write_error(path, error))?;
            progress.advanced(n as u64);
        }
        out.sync_all().map_err(|error| write_error(path, error))?;
        if let Some(len) = announced {
            if received < len {
                return Err(DataError::DownloadTruncated {
                    url: url.to_owned(),
                    received,
                    expected: len,
                });
            }
        }
        if received != f.size {
            return Err(DataError::DownloadSize {
                file: f.name.clone(),
                url: url.to_owned(),
                expected: f.size,
                found: received,
            });
        }
        let found = hex(&hasher.finalize());
        let wanted = f.sha256.as_deref().unwrap_or_default();
        if found != wanted {
            return Err(DataError::Checksum {
                file: f.name.clone(),
                url: url.to_owned(),
                expected: wanted.to_owned(),
                found,
            });
        }
        progress.file_finished();
        Ok(())
    }
}

/// Fetches `kind` into `<root>/<name>/` with the manifest and source the environment
/// gives ([`Downloader::from_env`]); see [`Downloader::fetch`].
///
/// # Errors
/// As [`Downloader::fetch`], and [`DataError::Manifest`] for a broken committed manifest.
pub fn download(kind: DatasetKind, root: &Path, progress: &mut dyn Progress) -> Result<Report> {
    Downloader::from_env()?.fetch(kind, root, progress)
}

/// [`locate`](crate::locate) `kind`, and if it is nowhere to be found and `download` is
/// set, fetch it (like torchvision's `download=True`) into `<explicit>/<name>/`, or
/// `./data/<name>/` when no directory was named.
///
/// Data found locally always wins (Fashion-MNIST from the Debian package included), so
/// nothing is fetched on a machine that has it.
///
/// # Errors
/// [`DataError::NotFound`] when the data is missing and `download` is off;
/// [`DataError::DownloadFailed`], which says both why the download failed and where the
/// data was looked for (and how else to get it), when the download fails.
pub fn locate_or_download(
    kind: DatasetKind,
    explicit: Option<&Path>,
    download: bool,
    progress: &mut dyn Progress,
) -> Result<PathBuf> {
    let paths = crate::SearchPaths::from_env(explicit);
    // Look first, so the downloader (manifest, TLS set-up) is only built when needed.
    match paths.locate(kind) {
        Ok(dir) => Ok(dir),
        Err(DataError::NotFound { .. }) if download => {
            let downloader = Downloader::from_env()?;
            locate_or_download_with(&paths, Some(&downloader), kind, progress)
        }
        Err(e) => Err(e),
    }
}

/// [`locate_or_download`] with explicit search paths and downloader (`None`: do not
/// download), for tests and callers that configure both.
///
/// # Errors
/// As [`locate_or_download`].
pub fn locate_or_download_with(
    paths: &crate::SearchPaths,
    downloader: Option<&Downloader>,
    kind: DatasetKind,
    progress: &mut dyn Progress,
) -> Result<PathBuf> {
    let not_found = match paths.locate(kind) {
        Ok(dir) => return Ok(dir),
        Err(e @ DataError::NotFound { .. }) => e,
        Err(e) => return Err(e),
    };
    let Some(downloader) = downloader else {
        return Err(not_found);
    };
    let root = match &paths.explicit {
        Some(dir) => dir.clone(),
        None => paths.cwd.join(DEFAULT_ROOT),
    };
    progress.note(&format!(
        "{kind} not found locally: downloading it into {}",
        root.join(kind.name()).display()
    ));
    let failed = |download: DataError| DataError::DownloadFailed {
        dataset: kind,
        root: root.clone(),
        download: Box::new(download),
        not_found: Box::new(not_found),
    };
    match downloader.fetch(kind, &root, progress) {
        // Locate again rather than trust the report: this checks that the manifest's
        // files are the ones the loader looks for.
        Ok(report) => crate::locate(kind, Some(&report.dir)).map_err(failed),
        Err(e) => Err(failed(e)),
    }
}

/// Whether `f` is already in `dir` (see the module documentation).
fn is_present(f: &ManifestFile, dir: &Path, progress: &mut dyn Progress) -> Result<bool> {
    match f.unpack {
        Unpack::TarGz => Ok(f.members.iter().all(|m| dir.join(m).is_file())),
        Unpack::None => {
            let path = dir.join(&f.name);
            if !path.is_file() {
                return Ok(false);
            }
            let found = sha256_file(&path)?;
            if Some(found.as_str()) == f.sha256.as_deref() {
                return Ok(true);
            }
            progress.note(&format!(
                "{} does not have the manifest's SHA-256 digest: fetching it again",
                path.display()
            ));
            Ok(false)
        }
    }
}

/// The SHA-256 digest of a file, as lowercase hex.
///
/// # Errors
/// [`DataError::Io`] if it cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |error| DataError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut file = BufReader::new(File::open(path).map_err(io)?);
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io)?;
    Ok(hex(&hasher.finalize()))
}

/// Adds the SHA-256 digest of every regular file under `dir` to `sums`, keyed by its path
/// relative to the directory the walk started in (`prefix` is `dir`'s, `/`-separated).
fn hash_tree(dir: &Path, prefix: &str, sums: &mut sums::Sums) -> Result<()> {
    let io = |error| DataError::Io {
        path: dir.to_path_buf(),
        error,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            hash_tree(&entry.path(), &key, sums)?;
        } else if kind.is_file() {
            sums.insert(key, sha256_file(&entry.path())?);
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn write_error(path: &Path, error: std::io::Error) -> DataError {
    DataError::Write {
        path: path.to_path_buf(),
        error,
    }
}

/// Turns a failed request into the error that says what the user can do about it.
fn request_error(url: &str, e: ureq::Error) -> DataError {
    match e {
        ureq::Error::Status(status, response) => DataError::HttpStatus {
            url: url.to_owned(),
            status,
            reason: response.status_text().to_owned(),
        },
        ureq::Error::Transport(t) => {
            let error = transport_message(&t);
            match t.kind() {
                ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed => DataError::Connect {
                    url: url.to_owned(),
                    error,
                },
                _ => DataError::Transfer {
                    url: url.to_owned(),
                    error,
                },
            }
        }
    }
}

/// The transport error without the URL `ureq` prefixes (the error names it already).
fn transport_message(t: &ureq::Transport) -> String {
    use std::error::Error as _;
    let mut msg = t.kind().to_string();
    if let Some(m) = t.message() {
        msg.push_str(": ");
        msg.push_str(m);
    }
    if let Some(source) = t.source() {
        msg.push_str(&format!(": {source}"));
    }
    msg
}

/// Extracts the regular files and directories of a `.tar.gz` into `out`.
///
/// Links and special files are skipped, and `tar` refuses entries whose path would leave
/// `out`, so a hostile archive cannot write elsewhere (the digest check already makes one
/// unlikely).
fn unpack_tar_gz(archive: &Path, out: &Path) -> Result<()> {
    let err = |error: String| DataError::Unpack {
        path: archive.to_path_buf(),
        error,
    };
    std::fs::create_dir_all(out).map_err(|error| write_error(out, error))?;
    let file = File::open(archive).map_err(|error| DataError::Io {
        path: archive.to_path_buf(),
        error,
    })?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    tar.set_preserve_permissions(false);
    for entry in tar.entries().map_err(|e| err(e.to_string()))? {
        let mut entry = entry.map_err(|e| err(e.to_string()))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        let inside = entry.unpack_in(out).map_err(|e| err(e.to_string()))?;
        if !inside {
            let path = entry.path().map(|p| p.display().to_string());
            return Err(err(format!(
                "entry {} would be written outside the target directory",
                path.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls_keep_the_dataset_level() {
        let m = Manifest::committed().unwrap();
        let f = m.files_of(DatasetKind::Mnist).next().unwrap();
        assert_eq!(Source::Canonical.url(f), f.url);
        assert_eq!(
            Source::Mirror("http://127.0.0.1:9/base/".into()).url(f),
            format!("http://127.0.0.1:9/base/mnist/{}", f.name)
        );
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 0xab, 0x0f]), "00ab0f");
    }
}
