//! Which instruction set the CPU convolution kernels use: by default the best this CPU
//! has (AVX-512, else AVX2 with FMA, else scalar code); [`set_cpu_isa`] caps it for the
//! whole process, so that the AVX2 path can be run and measured on a machine with AVX-512
//! (what PyTorch's `ATEN_CPU_CAPABILITY` does for its own kernels).
//!
//! Results depend on the instruction set only through the vector width of a few sums
//! (batch statistics, the weight gradient's partial sums), so a training run is
//! bit-for-bit repeatable for one instruction set, and may differ in the last bits from
//! one set to another.
//!
//! The kernels reached this way are this crate's stride-1 convolutions (forward, input
//! gradient, weight gradient), which dominate a ResNet's step. Candle's matrix product
//! (the `gemm` crate, used here for the linear head) picks its own kernels from the CPU
//! and cannot be capped at run time; the element-wise kernels are compiled for the
//! baseline x86-64 and are the same on every x86 CPU.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set for the CPU kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuIsa {
    /// The best this CPU has (the default).
    Native,
    /// AVX-512F (pulp's `V4`: 32 registers of 16 f32).
    Avx512,
    /// AVX2 with FMA (pulp's `V3`: 16 registers of 8 f32).
    Avx2,
    /// Portable scalar code (what a CPU other than x86-64 without a SIMD path runs).
    Scalar,
}

impl CpuIsa {
    /// Every value, in the order of the command-line names.
    pub const ALL: [CpuIsa; 4] = [CpuIsa::Native, CpuIsa::Avx512, CpuIsa::Avx2, CpuIsa::Scalar];

    /// The command-line name: `native`, `avx512`, `avx2`, `scalar`.
    pub fn name(self) -> &'static str {
        match self {
            CpuIsa::Native => "native",
            CpuIsa::Avx512 => "avx512",
            CpuIsa::Avx2 => "avx2",
            CpuIsa::Scalar => "scalar",
        }
    }

    /// Whether this CPU can run it.
    pub fn is_available(self) -> bool {
        match self {
            CpuIsa::Native | CpuIsa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx512 => pulp::x86::V4::try_new().is_some(),
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx2 => pulp::x86::V3::try_new().is_some(),
            #[cfg(not(target_arch = "x86_64"))]
            CpuIsa::Avx512 | CpuIsa::Avx2 => false,
        }
    }

    /// What [`CpuIsa::Native`] resolves to on this CPU (itself for the others).
    pub fn resolved(self) -> CpuIsa {
        match self {
            CpuIsa::Native if CpuIsa::Avx512.is_available() => CpuIsa::Avx512,
            CpuIsa::Native if CpuIsa::Avx2.is_available() => CpuIsa::Avx2,
            CpuIsa::Native => CpuIsa::Scalar,
            other => other,
        }
    }

    fn code(self) -> u8 {
        match self {
            CpuIsa::Native => 0,
            CpuIsa::Avx512 => 1,
            CpuIsa::Avx2 => 2,
            CpuIsa::Scalar => 3,
        }
    }

    fn of_code(code: u8) -> CpuIsa {
        CpuIsa::ALL[usize::from(code)]
    }
}

impl fmt::Display for CpuIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CpuIsa {
    type Err = UnknownCpuIsa;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuIsa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownCpuIsa(s.to_string()))
    }
}

/// A name that is not one of [`CpuIsa`]'s.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown instruction set {0:?} (expected native, avx512, avx2 or scalar)")]
pub struct UnknownCpuIsa(String);

/// [`set_cpu_isa`] asked for an instruction set this CPU lacks.
#[derive(Debug, Clone, thiserror::Error)]
#[error("this CPU has no {0} (instruction set {name} not available; `native` picks {best})", name = .0.name(), best = CpuIsa::Native.resolved())]
pub struct CpuIsaUnavailable(CpuIsa);

static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Runs the CPU kernels of this process, on every thread, with `isa` from now on.
///
/// # Errors
/// If this CPU lacks `isa` (nothing changes then).
///
/// ```
/// use tulip_models::{cpu_isa, set_cpu_isa, CpuIsa};
/// set_cpu_isa(CpuIsa::Scalar).unwrap();
/// assert_eq!(cpu_isa(), CpuIsa::Scalar);
/// set_cpu_isa(CpuIsa::Native).unwrap();
/// ```
pub fn set_cpu_isa(isa: CpuIsa) -> Result<(), CpuIsaUnavailable> {
    if !isa.is_available() {
        return Err(CpuIsaUnavailable(isa));
    }
    CHOSEN.store(isa.code(), Ordering::Relaxed);
    Ok(())
}

/// The instruction set the CPU kernels run with now ([`CpuIsa::Native`] unless
/// [`set_cpu_isa`] chose another).
pub fn cpu_isa() -> CpuIsa {
    CpuIsa::of_code(CHOSEN.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for isa in CpuIsa::ALL {
            assert_eq!(isa.name().parse::<CpuIsa>().unwrap(), isa);
            assert_eq!(isa.name().to_uppercase().parse::<CpuIsa>().unwrap(), isa);
        }
        let err = "sse9".parse::<CpuIsa>().unwrap_err().to_string();
        assert!(err.contains("sse9") && err.contains("avx2"), "{err}");
    }

    #[test]
    fn native_resolves_to_an_available_set() {
        let best = CpuIsa::Native.resolved();
        assert_ne!(best, CpuIsa::Native);
        assert!(best.is_available());
        assert!(CpuIsa::Scalar.is_available());
        // AVX-512 implies AVX2 (every AVX-512 CPU has AVX2 and FMA).
        if CpuIsa::Avx512.is_available() {
            assert!(CpuIsa::Avx2.is_available());
        }
    }
}
