//! Safetensors checkpoints: named tensors plus string metadata, written atomically.
//!
//! A model's tensors are stored under their PyTorch `state_dict` names with PyTorch
//! layouts, so a file converts 1:1 to and from the reference. Other state that must
//! survive a restart (the optimizer's momentum) may share the file under a reserved
//! prefix, [`EXTRA_PREFIX`]; loading a model ignores those names.
//!
//! Every file written here carries a SHA-256 of its tensors and metadata in its metadata
//! ([`CHECKSUM_KEY`]); reading verifies it, so a flipped byte is an error rather than a
//! silently different model. Files without one (converted from PyTorch) are read as they are.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::params::Params;
use crate::{ModelError, Result};

/// Metadata key of the checksum: SHA-256, in hex, of the other metadata and the tensors.
pub const CHECKSUM_KEY: &str = "sha256";

/// Names starting with this prefix are not model tensors (e.g. `optimizer.momentum.fc.weight`).
pub const EXTRA_PREFIX: &str = "optimizer.";

/// The contents of a checkpoint file.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// Tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// Free-form metadata (epoch, test error, the run configuration as JSON, …).
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// A checkpoint holding every tensor of `params` (parameters and buffers).
    pub fn from_params(params: &Params) -> Self {
        let tensors = params
            .all()
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect();
        Self {
            tensors,
            metadata: BTreeMap::new(),
        }
    }

    /// Reads a checkpoint onto `device`, verifying its checksum if it has one.
    ///
    /// # Errors
    /// The file is missing, not a valid safetensors file, or does not match its checksum
    /// ([`ModelError::CorruptCheckpoint`]).
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?;
        let bad = |reason: String| ModelError::BadCheckpoint {
            path: path.into(),
            reason,
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        if let Some(expected) = metadata.get(CHECKSUM_KEY) {
            let file =
                safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
            let mut views = file.tensors();
            views.sort_by(|a, b| a.0.cmp(&b.0));
            let found = checksum(
                &metadata,
                views
                    .iter()
                    .map(|(name, v)| (name.as_str(), v.dtype(), v.shape(), v.data())),
            );
            if *expected != found {
                return Err(ModelError::CorruptCheckpoint {
                    path: path.into(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .collect();
        Ok(Self { tensors, metadata })
    }

    /// Writes the checkpoint atomically: to a temporary file beside `path`, synced, then
    /// renamed over `path`, so a crash leaves either the old file or the new one. The
    /// metadata gets the checksum of the content ([`CHECKSUM_KEY`]).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write(&self, path: &Path) -> Result<()> {
        use safetensors::View;
        let io = |source| ModelError::Io {
            path: path.into(),
            source,
        };
        let sum = checksum(
            &self.metadata,
            self.tensors
                .iter()
                .map(|(name, t)| (name.as_str(), View::dtype(t), View::shape(t), View::data(t))),
        );
        let mut metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        metadata.insert(CHECKSUM_KEY.into(), sum);
        let bytes = safetensors::serialize(self.tensors.iter(), Some(metadata)).map_err(|e| {
            ModelError::BadCheckpoint {
                path: path.into(),
                reason: e.to_string(),
            }
        })?;
        write_atomic(path, &bytes).map_err(io)
    }

    /// Copies the model tensors of this checkpoint into `params`.
    ///
    /// Every tensor of `params` must be present with the same shape, and the checkpoint
    /// may hold no other model tensor (names under [`EXTRA_PREFIX`] are ignored).
    ///
    /// # Errors
    /// [`ModelError::CheckpointMismatch`] listing every missing, unexpected and mis-shaped
    /// tensor; nothing is copied in that case.
    pub fn load_into(&self, params: &Params, path: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut mis_shaped = Vec::new();
        for p in params.all() {
            match self.tensors.get(&p.name) {
                None => missing.push(p.name.clone()),
                Some(t) if t.dims() != p.var.dims() => mis_shaped.push(format!(
                    "{}: expected {:?}, found {:?}",
                    p.name,
                    p.var.dims(),
                    t.dims()
                )),
                Some(_) => {}
            }
        }
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !k.starts_with(EXTRA_PREFIX) && params.get(k).is_none())
            .cloned()
            .collect();
        if !(missing.is_empty() && unexpected.is_empty() && mis_shaped.is_empty()) {
            return Err(ModelError::CheckpointMismatch {
                path: PathBuf::from(path),
                missing,
                unexpected,
                mis_shaped,
            });
        }
        for p in params.all() {
            let t = &self.tensors[&p.name];
            p.var
                .set(&t.to_dtype(p.var.dtype())?.to_device(p.var.device())?)?;
        }
        Ok(())
    }
}

/// SHA-256, in hex, of the metadata (but its checksum) and of each tensor's name, dtype,
/// shape and bytes, tensors in name order.
fn checksum<'a, D: AsRef<[u8]>>(
    metadata: &BTreeMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, safetensors::Dtype, &'a [usize], D)>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for (k, v) in metadata.iter().filter(|(k, _)| *k != CHECKSUM_KEY) {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    for (name, dtype, shape, data) in tensors {
        field(name.as_bytes());
        field(format!("{dtype:?}{shape:?}").as_bytes());
        field(data.as_ref());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` through a temporary file and a rename.
///
/// # Errors
/// Any I/O failure; the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Some(name) = path.file_name() {
            crate::failpoint::hit(&format!("write:{}", name.to_string_lossy()));
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
