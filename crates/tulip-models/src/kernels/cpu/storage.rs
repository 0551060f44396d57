//! Reading Candle's CPU storage: contiguous views, shape checks and the float-type
//! dispatch every kernel starts with.

use std::borrow::Cow;

use candle_core::{bail, CpuStorage, Layout, Result, WithDType};

/// The elements of a storage in row-major order of `l`, borrowed when already contiguous.
pub(super) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [T]>> {
    let data = T::cpu_storage_as_slice(s)?;
    if let Some((a, b)) = l.contiguous_offsets() {
        return Ok(Cow::Borrowed(&data[a..b]));
    }
    let dims = l.dims();
    let strides = l.stride();
    let n = l.shape().elem_count();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(Cow::Owned(out));
    }
    let rank = dims.len();
    if rank == 0 {
        out.push(data[l.start_offset()]);
        return Ok(Cow::Owned(out));
    }
    let (last_d, last_s) = (dims[rank - 1], strides[rank - 1]);
    let mut idx = vec![0usize; rank];
    let mut off = l.start_offset();
    loop {
        out.extend((0..last_d).map(|i| data[off + i * last_s]));
        let mut r = rank - 1;
        loop {
            if r == 0 {
                return Ok(Cow::Owned(out));
            }
            r -= 1;
            idx[r] += 1;
            off += strides[r];
            if idx[r] < dims[r] {
                break;
            }
            off -= strides[r] * dims[r];
            idx[r] = 0;
        }
    }
}

/// Fails unless the two operands of `what` have one shape.
pub(super) fn same_dims(what: &str, l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.dims() != l2.dims() {
        bail!("{what}: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
    }
    Ok(())
}

/// `(B, C, S)` of a `[B, C, …]` shape: images, channels, and positions per plane (the
/// product of the remaining dimensions).
pub(super) fn batch_channels_positions(dims: &[usize]) -> Result<(usize, usize, usize)> {
    if dims.len() < 2 {
        bail!("per-channel op needs a [B, C, …] tensor, got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// `f::<f32>(args)` or `f::<f64>(args)` by the storage's type (`f` a function or a path
/// such as `Self::forward`); an error for any other.
macro_rules! float_dispatch {
    ($s:expr, $($f:ident)::+ ( $($arg:expr),* )) => {
        match $s {
            candle_core::CpuStorage::F32(_) => $($f)::+::<f32>($($arg),*),
            candle_core::CpuStorage::F64(_) => $($f)::+::<f64>($($arg),*),
            _ => candle_core::bail!("only f32 and f64 are supported"),
        }
    };
}
pub(super) use float_dispatch;
