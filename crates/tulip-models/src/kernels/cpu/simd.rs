//! The SIMD layer of the convolution kernels (through `pulp`): the float types' vectors
//! ([`Lane`]), the instruction set chosen at run time ([`Isa`]), loads and stores.

use bytemuck::Pod;
use pulp::{Simd, WithSimd};

use crate::kernels::cpu_isa::{cpu_isa, CpuIsa};

/// A float type with SIMD vectors (`f32`, `f64`).
pub(super) trait Lane:
    Pod
    + Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Neg<Output = Self>
    + 'static
{
    /// The SIMD vector of this type for instruction set `S`.
    type V<S: Simd>: Pod + Copy;
    const ZERO: Self;
    const ONE: Self;
    /// The value in f64 (exact).
    fn widen(self) -> f64;
    /// The value of this type nearest `v`.
    fn rounded(v: f64) -> Self;
    fn splat<S: Simd>(simd: S, v: Self) -> Self::V<S>;
    /// `a·b + c`, fused where the hardware has it.
    fn mul_add<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>, c: Self::V<S>) -> Self::V<S>;
    /// A vector of the first lanes of `xs` (as many as it has), the rest zero.
    fn partial_load<S: Simd>(simd: S, xs: &[Self]) -> Self::V<S>;
}

impl Lane for f32 {
    type V<S: Simd> = S::f32s;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn widen(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn rounded(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn splat<S: Simd>(simd: S, v: Self) -> Self::V<S> {
        simd.splat_f32s(v)
    }
    #[inline(always)]
    fn mul_add<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>, c: Self::V<S>) -> Self::V<S> {
        simd.mul_add_e_f32s(a, b, c)
    }
    #[inline(always)]
    fn partial_load<S: Simd>(simd: S, xs: &[Self]) -> Self::V<S> {
        simd.partial_load_f32s(xs)
    }
}

impl Lane for f64 {
    type V<S: Simd> = S::f64s;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }
    #[inline(always)]
    fn rounded(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn splat<S: Simd>(simd: S, v: Self) -> Self::V<S> {
        simd.splat_f64s(v)
    }
    #[inline(always)]
    fn mul_add<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>, c: Self::V<S>) -> Self::V<S> {
        simd.mul_add_e_f64s(a, b, c)
    }
    #[inline(always)]
    fn partial_load<S: Simd>(simd: S, xs: &[Self]) -> Self::V<S> {
        simd.partial_load_f64s(xs)
    }
}

/// The instruction set a kernel runs with: the process's choice ([`cpu_isa`]: the best this
/// CPU has unless capped), or (in tests) a given one, so that every code path is checked
/// on a machine that has AVX-512.
#[derive(Debug, Clone, Copy)]
pub(super) enum Isa {
    Chosen,
    #[cfg(test)]
    Scalar,
    #[cfg(all(test, target_arch = "x86_64"))]
    Avx2,
}

impl Isa {
    pub(super) fn dispatch<Op: WithSimd>(self, op: Op) -> Op::Output {
        match self {
            Isa::Chosen => match cpu_isa() {
                CpuIsa::Native => pulp::Arch::new().dispatch(op),
                CpuIsa::Scalar => Simd::vectorize(pulp::Scalar, op),
                // `set_cpu_isa` let these through only on a CPU that has them.
                #[cfg(target_arch = "x86_64")]
                CpuIsa::Avx512 => Simd::vectorize(pulp::x86::V4::try_new().expect("AVX-512"), op),
                #[cfg(target_arch = "x86_64")]
                CpuIsa::Avx2 => Simd::vectorize(pulp::x86::V3::try_new().expect("AVX2"), op),
                #[cfg(not(target_arch = "x86_64"))]
                CpuIsa::Avx512 | CpuIsa::Avx2 => unreachable!("no x86 instruction sets here"),
            },
            #[cfg(test)]
            Isa::Scalar => Simd::vectorize(pulp::Scalar, op),
            #[cfg(all(test, target_arch = "x86_64"))]
            Isa::Avx2 => Simd::vectorize(pulp::x86::V3::try_new().expect("AVX2"), op),
        }
    }
}

/// Vector registers of instruction set `S` (16 for AVX2 and scalar code, 32 for AVX-512):
/// the kernels size their register tiles by it.
#[inline(always)]
pub(super) fn registers<S: Simd, T: Lane>() -> usize {
    if std::mem::size_of::<T::V<S>>() >= 64 {
        32
    } else {
        16
    }
}

/// Elements per vector.
#[inline(always)]
pub(super) fn lanes<S: Simd, T: Lane>() -> usize {
    std::mem::size_of::<T::V<S>>() / std::mem::size_of::<T>()
}

#[inline(always)]
pub(super) fn load<S: Simd, T: Lane>(xs: &[T]) -> T::V<S> {
    bytemuck::pod_read_unaligned(bytemuck::cast_slice(&xs[..lanes::<S, T>()]))
}

#[inline(always)]
pub(super) fn store<S: Simd, T: Lane>(dst: &mut [T], v: T::V<S>) {
    dst[..lanes::<S, T>()].copy_from_slice(bytemuck::cast_slice(std::slice::from_ref(&v)));
}

/// The sum of four vectors' lanes: the vectors added first, then the lanes in f64. (A
/// function, not a closure, so that it is compiled for the caller's instruction set: as a
/// closure summing all 64 lanes it was not, and showed in a plain step's profile.)
#[inline(always)]
pub(super) fn lane_total<S: Simd, T: Lane>(simd: S, acc: [T::V<S>; 4]) -> f64 {
    let one = T::splat(simd, T::ONE);
    let low = T::mul_add(simd, one, acc[0], acc[1]);
    let high = T::mul_add(simd, one, acc[2], acc[3]);
    let v = T::mul_add(simd, one, low, high);
    let lanes: &[T] = bytemuck::cast_slice(std::slice::from_ref(&v));
    lanes.iter().map(|l| l.widen()).sum()
}
