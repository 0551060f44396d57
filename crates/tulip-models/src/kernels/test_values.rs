//! Seeded test tensors, the same on every machine.

use candle_core::{Device, Tensor};

pub(crate) fn seeded_uniform(shape: &[usize], seed: u64) -> Tensor {
    // Uniform in [-1, 1), from a linear congruential generator: the same values on every
    // machine, without the device's generator.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}
