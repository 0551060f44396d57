//! The record of a verified download: `SHA256SUMS` in the dataset directory.
//!
//! The downloader writes it once every file of a dataset has arrived and matched the
//! manifest (archives: once unpacked), in the format of `sha256sum` (`<hex>  <path>`, the
//! path relative to the dataset directory). [`load`](crate::load) checks every file it
//! reads that the record lists, so a downloaded file that changed afterwards is refused
//! rather than trained on. A directory without the record (data the user put there, the
//! Debian package's files) is loaded as it is: the record is what tells the two apart.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::download::{is_sha256, sha256_file};
use crate::{DataError, DatasetKind, Result};

/// Name of the record in the dataset directory.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// Digests by path relative to the dataset directory (`/`-separated).
pub(crate) type Sums = BTreeMap<String, String>;

/// Parses a record in `sha256sum`'s format (text or binary mode marker); `path` names it
/// in errors.
pub(crate) fn parse(text: &str, path: &Path) -> Result<Sums> {
    let mut sums = Sums::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |error: &str| DataError::SumsFile {
            path: path.to_path_buf(),
            line: i + 1,
            error: error.to_owned(),
        };
        let (digest, rest) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected `<sha256>  <file>`"))?;
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(|| bad("expected two spaces between the digest and the file"))?;
        if !is_sha256(digest) {
            return Err(bad("not a SHA-256 digest (64 lowercase hex digits)"));
        }
        if name.is_empty() {
            return Err(bad("no file name"));
        }
        sums.insert(name.to_owned(), digest.to_owned());
    }
    Ok(sums)
}

/// The record in `dir`, if there is one.
pub(crate) fn read(dir: &Path) -> Result<Option<Sums>> {
    let path = dir.join(SUMS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(DataError::Io { path, error }),
    }
}

/// Writes `sums` as `dir/SHA256SUMS`, through a temporary file and a rename so that a
/// reader never sees half a record.
pub(crate) fn write(dir: &Path, sums: &Sums) -> Result<()> {
    let text: String = sums
        .iter()
        .map(|(name, digest)| format!("{digest}  {name}\n"))
        .collect();
    let path = dir.join(SUMS_FILE);
    // Hidden, like the downloader's other staging names: never mistaken for data.
    let tmp = dir.join(format!(".{SUMS_FILE}.tmp"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::Write { path, error });
    }
    Ok(())
}

/// Checks each of `files` (paths the loader is about to read, under `dir`) that the record
/// in `dir` lists against its digest. Without a record nothing is checked.
pub(crate) fn verify(kind: DatasetKind, dir: &Path, files: &[PathBuf]) -> Result<()> {
    let Some(sums) = read(dir)? else {
        return Ok(());
    };
    for file in files {
        // Path equality compares components, so a listed `a/b` matches `dir/a` joined `b`.
        let Some(expected) = sums
            .iter()
            .find_map(|(name, digest)| (dir.join(name) == *file).then_some(digest))
        else {
            continue;
        };
        let found = sha256_file(file)?;
        if &found != expected {
            return Err(DataError::ChangedSinceDownload {
                path: file.clone(),
                sums: dir.join(SUMS_FILE),
                dataset: kind,
                expected: expected.clone(),
                found,
            });
        }
    }
    Ok(())
}
