//! Times one `f32` GEMM of the size of the whole nearest-neighbour problem,
//! `[10000×784]·[784×60000]` (output 2.4 GB), as a yardstick for `tulip nn-attack`.
//!
//! `cargo run --release -p tulip-eval --example gemm_bench [REPEATS]`
#![allow(missing_docs)]

use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dev = Device::Cpu;
    let a = Tensor::rand(0f32, 1f32, (10_000, 784), &dev)?;
    let b = Tensor::rand(0f32, 1f32, (60_000, 784), &dev)?;
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let c = a.matmul(&b.t()?)?;
        let s = t.elapsed().as_secs_f64();
        drop(c);
        println!(
            "gemm [10000×784]·[784×60000]: {s:.2} s ({:.1} GFLOP/s)",
            2.0 * 1e4 * 6e4 * 784.0 / s / 1e9
        );
        times.push(s);
    }
    times.sort_by(f64::total_cmp);
    println!("median {:.2} s", times[times.len() / 2]);
    Ok(())
}
