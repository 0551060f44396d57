//! Sharing a kernel's work among Candle's worker threads: plane by plane, channel by
//! channel, or element by element, each result computed in one fixed order so that it does
//! not depend on the number of threads.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Mutex;

use candle_core::cpu_backend::{binary_map_vec_par, unary_map_vec_par};
use candle_core::{CpuStorage, Layout, Result, Shape, WithDType};

use super::storage::same_dims;

/// The threads the kernels share their work among: Candle's persistent worker pool and
/// the calling thread.
pub(super) fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Runs `job(first index, part)` on each part of `parts`, part `t` starting at index
/// `t · per_thread` (an image, a channel), and returns the results in order.
///
/// The parts run on Candle's persistent worker pool (the calling thread takes one), dealt
/// round-robin when there are more parts than [`threads`], so that no call pays for
/// starting a thread (as a scoped thread per call did).
pub(super) fn on_threads<P: Send, R: Send>(
    per_thread: usize,
    parts: impl Iterator<Item = P>,
    job: impl Fn(usize, P) -> R + Sync,
) -> Vec<R> {
    let parts: Vec<Mutex<Option<P>>> = parts.map(|p| Mutex::new(Some(p))).collect();
    let results: Vec<Mutex<Option<R>>> = parts.iter().map(|_| Mutex::new(None)).collect();
    let run = |t: usize| {
        let part = parts[t]
            .lock()
            .expect("part lock")
            .take()
            .expect("part taken once");
        let result = job(t * per_thread, part);
        *results[t].lock().expect("result lock") = Some(result);
    };
    if parts.len() == 1 {
        run(0);
    } else if parts.len() > 1 {
        let stride = threads();
        candle_core::utils::barrier_pool().execute(|tid| {
            (tid..parts.len()).step_by(stride).for_each(run);
        });
    }
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("result lock")
                .expect("every part ran")
        })
        .collect()
}

/// A new vector of `len` elements computed on the threads in parts of `part` elements:
/// `fill(t, part)` writes part `t`, handed over set to `zero` (what it does not write stays
/// zero), and the results come back in order.
///
/// Each thread zeroes its own part just before filling it, where `vec![0; len]` zeroed
/// the whole vector on the calling thread first while the workers waited: for the
/// convolutions' outputs, megabytes per call, that serial fill showed in every step.
pub(super) fn vec_on_threads<T: Copy + Send + Sync, R: Send>(
    len: usize,
    part: usize,
    zero: T,
    fill: impl Fn(usize, &mut [T]) -> R + Sync,
) -> (Vec<T>, Vec<R>) {
    let ([out], results) = vecs_on_threads(len, part, zero, |t, [part]| fill(t, part));
    (out, results)
}

/// [`vec_on_threads`] for `N` vectors of one length, part `t` of each filled by one call.
fn vecs_on_threads<T: Copy + Send + Sync, R: Send, const N: usize>(
    len: usize,
    part: usize,
    zero: T,
    fill: impl Fn(usize, [&mut [T]; N]) -> R + Sync,
) -> ([Vec<T>; N], Vec<R>) {
    let mut outputs: [Vec<T>; N] = std::array::from_fn(|_| Vec::with_capacity(len));
    let mut chunks = outputs
        .each_mut()
        .map(|o| o.spare_capacity_mut()[..len].chunks_mut(part.max(1)));
    let parts = std::iter::from_fn(|| {
        let parts: [Option<&mut [MaybeUninit<T>]>; N] = chunks.each_mut().map(|c| c.next());
        parts.into_iter().collect::<Option<Vec<_>>>()
    });
    let results = on_threads(1, parts, |t, parts| {
        let mut parts = parts.into_iter().map(|p| filled_with(p, zero));
        fill(t, std::array::from_fn(|_| parts.next().expect("N parts")))
    });
    for out in &mut outputs {
        // SAFETY: the parts cover the first `len` elements, and `filled_with` initialised each
        // of them (`on_threads` runs every part, or panics and `out` is dropped empty).
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(len);
        }
    }
    (outputs, results)
}

/// `part` with every element set to `value`, as initialised values.
fn filled_with<T: Copy>(part: &mut [MaybeUninit<T>], value: T) -> &mut [T] {
    for v in part.iter_mut() {
        v.write(value);
    }
    // SAFETY: every element was written just above, and `MaybeUninit<T>` has the layout
    // of `T`.
    #[allow(unsafe_code)]
    unsafe {
        &mut *(part as *mut [MaybeUninit<T>] as *mut [T])
    }
}

/// Plane `i` (of `sz` elements) of a `[B, C, S]` tensor's data.
pub(super) fn plane<T>(t: &[T], sz: usize, i: usize) -> &[T] {
    &t[i * sz..][..sz]
}

/// Per channel of a `[B, C, …]` tensor, the sum over its planes of `per_plane(i)` (`i` a
/// plane, `i mod C` its channel), added in image order. The planes are visited in memory
/// order, shared among the threads: channel by channel, each thread's reads jumped from
/// image to image (batch norm's backward sums done that way slowed every training step,
/// the exact penalty's most).
pub(super) fn channel_totals<const N: usize>(
    (b, c): (usize, usize),
    per_plane: impl Fn(usize) -> [f64; N] + Sync,
) -> Vec<[f64; N]> {
    let planes = map_indices(b * c, per_plane);
    let mut totals = vec![[0.0; N]; c];
    for (i, p) in planes.iter().enumerate() {
        for (t, v) in totals[i % c.max(1)].iter_mut().zip(p) {
            *t += v;
        }
    }
    totals
}

/// `[f(i) for i in 0..n]` (`i` a channel, a plane), the indices shared among the threads
/// in contiguous ranges. Each value is computed by one thread in one fixed order, so the
/// result does not depend on the number of threads.
pub(super) fn map_indices<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let per_thread = n.div_ceil(threads().max(1)).max(1);
    let ranges = (0..n)
        .step_by(per_thread)
        .map(|i0| i0..(i0 + per_thread).min(n));
    let parts = on_threads(per_thread, ranges, |_, range| {
        range.map(&f).collect::<Vec<_>>()
    });
    parts.into_iter().flatten().collect()
}

/// `N` outputs of `planes` planes of `sz` elements, computed plane by plane on the
/// threads: `fill(i, outputs)` writes plane `i` of each (handed over zeroed, as in
/// [`vec_on_threads`]).
pub(super) fn planes_on_threads<T: WithDType, const N: usize>(
    planes: usize,
    sz: usize,
    fill: impl Fn(usize, [&mut [T]; N]) + Sync,
) -> [Vec<T>; N] {
    let per_thread = planes.div_ceil(threads()).max(1);
    let zero = T::from_f64(0.0);
    let (outputs, _) = vecs_on_threads(planes * sz, per_thread * sz, zero, |t, mut part| {
        let count = part.first().map_or(0, |p| p.len() / sz.max(1));
        for j in 0..count {
            let mut outs = part.iter_mut().map(|p| &mut p[j * sz..][..sz]);
            fill(
                t * per_thread + j,
                std::array::from_fn(|_| outs.next().expect("N outputs")),
            );
        }
    });
    outputs
}

/// Calls `f(i, range, out)` for each piece of plane `i` (planes of `sz` elements) that the
/// element range `at .. at + out.len()` covers, with `range` the piece's elements within
/// the range and `out` its part of `out`.
fn by_plane<T>(
    at: usize,
    sz: usize,
    out: &mut [T],
    mut f: impl FnMut(usize, Range<usize>, &mut [T]),
) {
    let sz = sz.max(1);
    let mut done = 0;
    while done < out.len() {
        let (i, offset) = ((at + done) / sz, (at + done) % sz);
        let len = (sz - offset).min(out.len() - done);
        f(i, done..done + len, &mut out[done..][..len]);
        done += len;
    }
}

/// Where `piece`, a subslice of `whole`, starts in it.
fn offset_in<T>(whole: &[T], piece: &[T]) -> usize {
    (piece.as_ptr() as usize - whole.as_ptr() as usize) / std::mem::size_of::<T>().max(1)
}

/// A new vector of `x`'s length computed plane by plane (planes of `sz` elements) on the
/// threads: `f(i, x, out)` fills `out` from `x`, both a piece of plane `i`.
///
/// Candle's parallel map writes its output into uninitialised memory, which safe code here
/// cannot; with a zero fill first, the fill cost what the second thread saved on these
/// one-output passes. Its map hands over pieces without their positions, so each piece's
/// position is recovered from its address in `x`.
pub(super) fn map_planes<T: WithDType>(
    x: &[T],
    sz: usize,
    f: impl Fn(usize, &[T], &mut [T]) + Sync,
) -> Vec<T> {
    let layout = Layout::contiguous(x.len());
    unary_map_vec_par(
        x,
        &layout,
        |_| unreachable!("a contiguous layout is mapped piece by piece"),
        |xs, out| {
            by_plane(offset_in(x, xs), sz, out, |i, range, out| {
                f(i, &xs[range], out)
            });
        },
    )
}

/// [`map_planes`] of two inputs of one length: `f(i, x, y, out)`.
pub(super) fn zip_planes<T: WithDType>(
    x: &[T],
    y: &[T],
    sz: usize,
    f: impl Fn(usize, &[T], &[T], &mut [T]) + Sync,
) -> Vec<T> {
    assert_eq!(x.len(), y.len(), "zip_planes: lengths differ");
    let layout = Layout::contiguous(x.len());
    binary_map_vec_par(
        &layout,
        &layout,
        x,
        y,
        |_, _| unreachable!("contiguous layouts are mapped piece by piece"),
        |xs, ys, out| {
            by_plane(offset_in(x, xs), sz, out, |i, range, out| {
                f(i, &xs[range.clone()], &ys[range], out);
            });
        },
        |_, _, _| unreachable!("contiguous layouts of one shape do not broadcast"),
    )
}

/// `out[i] = f(x[i], y[i])` for two tensors of one shape.
pub(super) fn zip_map<T: WithDType>(
    what: &str,
    (xs, xl): (&CpuStorage, &Layout),
    (ys, yl): (&CpuStorage, &Layout),
    f: impl Fn(T, T) -> T + Sync,
) -> Result<(CpuStorage, Shape)> {
    same_dims(what, xl, yl)?;
    let (x, y) = (T::cpu_storage_as_slice(xs)?, T::cpu_storage_as_slice(ys)?);
    // On the threads without a zero fill, as `map_planes`. (`f` must capture by value: a
    // captured reference is reloaded for every element and the loop is not vectorised.)
    let out = binary_map_vec_par(
        xl,
        yl,
        x,
        y,
        &f,
        |a, b, out| {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        },
        |b, a, out| {
            for (o, &a) in out.iter_mut().zip(a) {
                *o = f(a, b);
            }
        },
    );
    Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element of the vectors comes from the part that wrote it or is zero, the parts
    /// in order, for lengths that do and do not divide into parts, on whatever threads.
    #[test]
    fn vectors_filled_on_threads_are_zero_where_not_written() {
        for (len, part) in [(0, 4), (1, 4), (10, 3), (1000, 250), (1001, 250), (7, 100)] {
            let (v, firsts) = vec_on_threads(len, part, 0u32, |t, p| {
                // Write every element but the last of the part.
                let n = p.len();
                for (j, x) in p.iter_mut().take(n.saturating_sub(1)).enumerate() {
                    *x = (t * part + j + 1) as u32;
                }
                t
            });
            assert_eq!(v.len(), len);
            assert_eq!(firsts, (0..len.div_ceil(part)).collect::<Vec<_>>());
            for (i, &x) in v.iter().enumerate() {
                let last_of_part = i % part == part - 1 || i == len - 1;
                let want = if last_of_part { 0 } else { i as u32 + 1 };
                assert_eq!(x, want, "element {i} of {len} in parts of {part}");
            }
            let [a, b] = planes_on_threads(len, 1, |i, [a, b]: [&mut [f32]; 2]| {
                a[0] = i as f32;
                if i % 2 == 0 {
                    b[0] = 1.0;
                }
            });
            for i in 0..len {
                assert_eq!((a[i], b[i]), (i as f32, f32::from(u8::from(i % 2 == 0))));
            }
        }
    }

    /// The plane-wise parallel maps against the same map written out element by element:
    /// large enough for Candle's map to split the work (at 64Ki elements), in pieces of
    /// 16Ki that start and end inside planes of 777, and small (one piece).
    #[test]
    fn plane_maps_give_each_element_its_plane() {
        for (planes, sz) in [(200, 777), (3, 5), (90, 1024)] {
            let n = planes * sz;
            let x: Vec<f32> = (0..n).map(|j| (j % 1013) as f32).collect();
            let y: Vec<f32> = (0..n).map(|j| (j % 7) as f32).collect();
            let mapped = map_planes(&x, sz, |i, x, out| {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * (i + 1) as f32;
                }
            });
            let zipped = zip_planes(&x, &y, sz, |i, x, y, out| {
                for ((o, &a), &b) in out.iter_mut().zip(x).zip(y) {
                    *o = a + b * i as f32;
                }
            });
            for j in 0..n {
                let i = (j / sz) as f32;
                assert_eq!(
                    mapped[j],
                    x[j] * (i + 1.0),
                    "map: element {j} of {planes}×{sz}"
                );
                assert_eq!(
                    zipped[j],
                    x[j] + y[j] * i,
                    "zip: element {j} of {planes}×{sz}"
                );
            }
        }
    }
}
