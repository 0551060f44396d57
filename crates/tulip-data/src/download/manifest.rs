//! The list of downloadable files: `data/manifest.toml` (a link to this crate's own
//! `manifest.toml`, which is packaged with it).

use std::path::{Component, Path};

use serde::Deserialize;

use crate::{DataError, DatasetKind, Result};

/// The committed manifest, compiled in so that the binary verifies downloads against the
/// digests reviewed in the repository, wherever it runs from.
const COMMITTED: &str = include_str!("../../manifest.toml");

/// How a downloaded file becomes the dataset's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Unpack {
    /// Kept as it is (the gzipped IDX files: the reader decompresses them itself).
    #[default]
    #[serde(rename = "none")]
    None,
    /// A gzipped tar archive, extracted into the dataset directory and then deleted
    /// (the CIFAR binary versions).
    #[serde(rename = "tar.gz")]
    TarGz,
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// The dataset it belongs to.
    pub dataset: DatasetKind,
    /// Its file name, both in the dataset directory and under a mirror
    /// (`<mirror>/<dataset>/<name>`).
    pub name: String,
    /// Its canonical URL.
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256 digest, 64 lowercase hex digits. Optional in the format only so that a
    /// missing digest is reported as such ([`DataError::NoChecksum`]) rather than as a
    /// parse error; such a file is never downloaded.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Where the digest comes from (for reviewers; not used by the code).
    #[serde(default)]
    pub source: Option<String>,
    /// How the file is unpacked.
    #[serde(default)]
    pub unpack: Unpack,
    /// For an archive: paths, relative to the dataset directory, that must exist once it
    /// is unpacked. Their presence is what makes the archive count as already fetched.
    #[serde(default)]
    pub members: Vec<String>,
}

/// The downloadable files of every dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    files: Vec<ManifestFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestToml {
    #[serde(default)]
    file: Vec<ManifestFile>,
}

impl Manifest {
    /// The manifest committed as `data/manifest.toml`.
    ///
    /// # Errors
    /// [`DataError::Manifest`] if it does not parse (a broken commit; the tests catch it).
    pub fn committed() -> Result<Self> {
        Self::parse(COMMITTED, "data/manifest.toml (built in)")
    }

    /// The manifest file named by `$TULIP_DATA_MANIFEST` if it is set and not empty,
    /// else [`Manifest::committed`].
    ///
    /// # Errors
    /// [`DataError::Io`] if the named file cannot be read; [`DataError::Manifest`] if the
    /// manifest does not parse.
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(super::MANIFEST_ENV).filter(|v| !v.is_empty()) {
            Some(path) => Self::read(Path::new(&path)),
            None => Self::committed(),
        }
    }

    /// Reads and parses a manifest file.
    ///
    /// # Errors
    /// [`DataError::Io`] if it cannot be read; [`DataError::Manifest`] if it does not parse.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| DataError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a manifest in the format of `data/manifest.toml`; `origin` names it in
    /// errors.
    ///
    /// # Errors
    /// [`DataError::Manifest`] if the text is not valid TOML of that format, or an entry
    /// is unusable: a name that is not a plain file name, a malformed digest, an archive
    /// without members or a member path that leaves the dataset directory, or two
    /// entries of one dataset with the same name.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let bad = |error: String| DataError::Manifest {
            origin: origin.to_owned(),
            error,
        };
        let parsed: ManifestToml = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for (i, f) in parsed.file.iter().enumerate() {
            let what = format!("entry {} ({} {})", i + 1, f.dataset, f.name);
            if !is_plain_name(&f.name) {
                return Err(bad(format!("{what}: name must be a plain file name")));
            }
            if let Some(d) = &f.sha256 {
                if !is_sha256(d) {
                    return Err(bad(format!(
                        "{what}: sha256 must be 64 lowercase hex digits, got {d:?}"
                    )));
                }
            }
            if f.unpack == Unpack::TarGz && f.members.is_empty() {
                return Err(bad(format!("{what}: an archive needs `members`")));
            }
            if let Some(m) = f.members.iter().find(|m| !is_inner_path(m)) {
                return Err(bad(format!("{what}: member {m:?} is not a relative path")));
            }
            if parsed.file[..i]
                .iter()
                .any(|g| g.dataset == f.dataset && g.name == f.name)
            {
                return Err(bad(format!("{what}: listed twice")));
            }
        }
        Ok(Manifest { files: parsed.file })
    }

    /// Every file, in manifest order.
    pub fn files(&self) -> &[ManifestFile] {
        &self.files
    }

    /// The files of `kind`, in manifest order.
    pub fn files_of(&self, kind: DatasetKind) -> impl Iterator<Item = &ManifestFile> {
        self.files.iter().filter(move |f| f.dataset == kind)
    }
}

/// Whether `d` is a SHA-256 digest as the manifest writes them.
pub(crate) fn is_sha256(d: &str) -> bool {
    d.len() == 64
        && d.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A single path component that is not hidden (hidden names are the downloader's own
/// staging files).
fn is_plain_name(name: &str) -> bool {
    !name.starts_with('.')
        && matches!(
            Path::new(name).components().collect::<Vec<_>>().as_slice(),
            [Component::Normal(_)]
        )
}

/// A relative path that stays inside the directory it is joined to.
fn is_inner_path(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
        [[file]]
        dataset = "mnist"
        name = "a.gz"
        url = "http://example.invalid/a.gz"
        size = 3
        sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    "#;

    #[test]
    fn parses_an_entry() {
        let m = Manifest::parse(ONE, "test").unwrap();
        let f = &m.files()[0];
        assert_eq!(
            (f.dataset, f.name.as_str(), f.size),
            (DatasetKind::Mnist, "a.gz", 3)
        );
        assert_eq!(f.unpack, Unpack::None);
        assert_eq!(m.files_of(DatasetKind::Cifar10).count(), 0);
    }

    #[test]
    fn rejects_bad_entries() {
        for (from, to, why) in [
            ("a.gz\"", "../a.gz\"", "plain file name"),
            ("a.gz\"", ".a.gz\"", "plain file name"),
            ("\"ba78", "\"BA78", "64 lowercase hex"),
            ("15ad\"", "15a\"", "64 lowercase hex"),
            (
                "size = 3",
                "size = 3\nunpack = \"tar.gz\"",
                "needs `members`",
            ),
            ("size = 3", "size = 3\nunpack = \"zip\"", "unknown variant"),
            ("size = 3", "size = 3\ncolour = 1", "unknown field"),
        ] {
            let err = Manifest::parse(&ONE.replace(from, to), "test").unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        let twice = format!("{ONE}{ONE}");
        let err = Manifest::parse(&twice, "test").unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let escape = ONE.replace(
            "size = 3",
            "size = 3\nunpack = \"tar.gz\"\nmembers = [\"../x\"]",
        );
        let err = Manifest::parse(&escape, "test").unwrap_err();
        assert!(err.to_string().contains("not a relative path"), "{err}");
    }

    #[test]
    fn a_missing_digest_parses_but_is_visible() {
        let text = ONE.replace(
            "sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"",
            "",
        );
        let m = Manifest::parse(&text, "test").unwrap();
        assert_eq!(m.files()[0].sha256, None);
    }
}
