//! Readers for the IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a big-endian header followed by unsigned bytes:
//! images are `00 00 08 03`, count, rows, cols (16 bytes) then `count*rows*cols` pixels;
//! labels are `00 00 08 01`, count (8 bytes) then `count` labels. Whether a file is
//! compressed is decided by the gzip magic bytes `1f 8b`, not by its extension.

use std::io::Read;
use std::path::Path;

use crate::{DataError, Result};

/// Magic number of an IDX file of unsigned-byte 3-D arrays (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned-byte 1-D arrays (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Read an IDX image file: `(pixels, n, rows, cols)`, pixels in row-major order.
///
/// Any count and image size are accepted here; [`load`](crate::load) checks both against
/// the dataset's.
///
/// # Errors
/// [`DataError::Io`] if the file cannot be read, [`DataError::Gzip`] if it is corrupt
/// gzip, [`DataError::BadMagic`] if it is not an IDX image file,
/// [`DataError::Truncated`] / [`DataError::TrailingData`] if its size disagrees with
/// its header.
pub fn read_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let data = read_maybe_gz(path)?;
    let dims = header(path, &data, IMAGES_MAGIC, "IDX images", 3)?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    // Saturating: an absurd header then reads as a truncated file, not an overflow.
    let len = (n as u64)
        .saturating_mul(rows as u64)
        .saturating_mul(cols as u64);
    let pixels = body(path, data, 16, len)?;
    Ok((pixels, n, rows, cols))
}

/// Read an IDX label file.
///
/// # Errors
/// As [`read_images`], for label files. Neither the count nor the label values are
/// checked here (the reader does not know the dataset); [`load`](crate::load) checks them.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let data = read_maybe_gz(path)?;
    let dims = header(path, &data, LABELS_MAGIC, "IDX labels", 1)?;
    body(path, data, 8, dims[0] as u64)
}

/// The whole file, decompressed if it starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    // The gzip trailer holds the uncompressed size mod 2^32: a good capacity hint.
    let hint = raw
        .len()
        .checked_sub(4)
        .map_or(0, |i| {
            u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]) as usize
        })
        .min(1 << 30);
    let mut out = Vec::with_capacity(hint);
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|error| DataError::Gzip {
            path: path.to_path_buf(),
            error,
        })?;
    Ok(out)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Check the magic number and return the `ndim` dimension sizes.
fn header(
    path: &Path,
    data: &[u8],
    magic: u32,
    what: &'static str,
    ndim: usize,
) -> Result<Vec<usize>> {
    let header_len = 4 + 4 * ndim;
    if data.len() >= 4 && be_u32(data) != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            what,
            expected: magic,
            found: be_u32(data),
        });
    }
    if data.len() < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len as u64,
            found: data.len() as u64,
        });
    }
    Ok((0..ndim)
        .map(|d| be_u32(&data[4 + 4 * d..]) as usize)
        .collect())
}

/// Strip the `header_len`-byte header, checking exactly `body_len` bytes follow.
fn body(path: &Path, mut data: Vec<u8>, header_len: usize, body_len: u64) -> Result<Vec<u8>> {
    let expected = (header_len as u64).saturating_add(body_len);
    let found = data.len() as u64;
    if found < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    if found > expected {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    data.drain(..header_len);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_shorter_than_magic_is_truncated() {
        let err = header(Path::new("x"), &[0, 0], IMAGES_MAGIC, "IDX images", 3).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 16,
                    found: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn huge_declared_size_is_truncated_not_overflow() {
        let mut d = IMAGES_MAGIC.to_be_bytes().to_vec();
        for _ in 0..3 {
            d.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge");
        std::fs::write(&path, &d).unwrap();
        let err = read_images(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: u64::MAX,
                    found: 16,
                    ..
                }
            ),
            "{err}"
        );
    }
}
