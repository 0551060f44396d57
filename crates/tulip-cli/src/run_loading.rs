//! Loading a trained run for `tulip eval` and `tulip attack`: the library's
//! [`tulip_train::load_run`], with its errors pointed at the flags that fix them.

use tulip_train::{load_run, LoadRunError, LoadedRun, RunSource};

/// The run, or an error that names the directory or file and the flag to change.
pub fn load(src: RunSource<'_>) -> anyhow::Result<LoadedRun> {
    load_run(&src).map_err(|e| match e {
        LoadRunError::MissingCheckpoint(path) => {
            anyhow::anyhow!("--checkpoint {}: no such file", path.display())
        }
        e @ LoadRunError::NoCheckpoint { .. } => {
            anyhow::anyhow!("{e} or pass --checkpoint FILE")
        }
        e @ LoadRunError::NonFinite { .. } => {
            anyhow::anyhow!("{e}; pass --checkpoint to choose another checkpoint")
        }
        e => e.into(),
    })
}
