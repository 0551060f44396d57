//! Layer micro-benchmark: this crate's stride-1 convolution and batch norm against
//! Candle's built-ins (`conv2d`, broadcast batch norm), forward and forward+backward,
//! at the ResNet22 sizes (batch 128). Median of 5 runs after a warm-up.
//!
//!     cargo bench -p tulip-models --bench layers [conv|bn|loss|mm] [cifar] [avx2|avx512|scalar]
//!
//! The sizes are Fashion-MNIST's (28, 14, 7); `cifar` takes CIFAR's (32, 16, 8). An
//! instruction set's name runs the kernels with it (`tulip_models::set_cpu_isa`). Run it
//! with glibc told to keep freed memory (`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
//! MALLOC_TOP_PAD_=1073741824`, as `tulip` and `cargo xtask bench` do): otherwise every
//! large output is a fresh `mmap` whose page faults swamp the kernels' time.

use candle_core::{DType, Device, Result, Tensor, Var};
use std::time::Instant;
use tulip_models::layers::{BatchNorm, Conv2d, Conv2dConfig};
use tulip_models::{cpu_isa, set_cpu_isa, CpuIsa, Mode, ParamBuilder};

/// Prints and returns the median time of `f` in milliseconds.
fn t<F: FnMut() -> Tensor>(name: &str, mut f: F) -> f64 {
    let _ = f();
    let mut v = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        let _ = f();
        v.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{name:40}: {:7.1} ms (median of 5)", v[2]);
    v[2]
}

fn old_bn(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    let r = [0usize, 2, 3];
    let mean = x.mean_keepdim(r.as_slice())?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(r.as_slice())?;
    centred
        .broadcast_div(&(var + 1e-5)?.sqrt()?)?
        .broadcast_mul(&w.reshape((1, c, 1, 1))?)?
        .broadcast_add(&b.reshape((1, c, 1, 1))?)
}

fn main() -> Result<()> {
    let d = Device::Cpu;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let isa = args.iter().find_map(|a| a.parse::<CpuIsa>().ok());
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| a.parse::<CpuIsa>().is_err())
        .collect();
    if let Some(isa) = isa {
        set_cpu_isa(isa).expect("an instruction set this CPU has");
    }
    println!("kernels: {}", cpu_isa().resolved());
    let what = args.first().copied().unwrap_or_default().to_string();
    let cifar = args.get(1).copied() == Some("cifar");
    let sizes = if cifar {
        [(16usize, 32usize), (32, 16), (64, 8)]
    } else {
        [(16, 28), (32, 14), (64, 7)]
    };
    for (c, s) in sizes {
        println!("--- 128x{c}x{s}x{s}");
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (128, c, s, s), &d)?)?;
        let pb = ParamBuilder::new(0, DType::F32, &d);
        if what.is_empty() || what == "loss" {
            let r = Tensor::randn(0f32, 1., (128, c, s, s), &d)?;
            t("loss only (x*r).sum bwd", || {
                let g = (x.as_tensor() * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                g.get(x.as_tensor()).unwrap().clone()
            });
            t("x*r", || (x.as_tensor() * &r).unwrap());
            t("x.sqr", || x.as_tensor().sqr().unwrap());
            t("x.affine", || x.as_tensor().affine(2.0, 0.0).unwrap());
            t("x.sum_all", || x.as_tensor().sum_all().unwrap());
            let one = Tensor::new(1f32, &d)?;
            t("scalar.broadcast_as * r", || {
                one.broadcast_as(r.shape()).unwrap().mul(&r).unwrap()
            });
            t("loss only x.sqr.sum bwd", || {
                let g = x
                    .as_tensor()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                g.get(x.as_tensor()).unwrap().clone()
            });
        }
        if what.is_empty() || what == "conv" {
            let conv = Conv2d::new(&Conv2dConfig::same(c, c, 3, false), pb.pp("c")).unwrap();
            let w = Var::from_tensor(&(Tensor::randn(0f32, 1., (c, c, 3, 3), &d)? * 0.1)?)?;
            t("candle conv2d fwd", || {
                x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap()
            });
            t("candle conv fwd+bwd", || {
                let y = x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                g.get(w.as_tensor()).unwrap().clone()
            });
            let ms = t("layer conv fwd", || conv.forward(x.as_tensor()).unwrap());
            let flop = 2.0 * 128.0 * (c * c * 9 * s * s) as f64;
            println!("{:40}: {:7.0} GF/s", "  layer conv fwd", flop / ms / 1e6);
            t("layer conv fwd+bwd", || {
                let y = conv.forward(x.as_tensor()).unwrap();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                g.get(x.as_tensor()).unwrap().clone()
            });
        }
        if what.is_empty() || what == "bn" {
            let bn = BatchNorm::new(c, true, pb.pp("bn")).unwrap();
            let w = Var::from_tensor(&Tensor::ones(c, DType::F32, &d)?)?;
            let b = Var::from_tensor(&Tensor::zeros(c, DType::F32, &d)?)?;
            let r = Tensor::randn(0f32, 1., (128, c, s, s), &d)?;
            t("old bn fwd", || {
                old_bn(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap()
            });
            t("old bn fwd+bwd", || {
                let y = old_bn(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(x.as_tensor()).unwrap().clone()
            });
            t("layer bn fwd", || {
                bn.forward(x.as_tensor(), Mode::Train).unwrap()
            });
            t("layer bn fwd+bwd", || {
                let y = bn.forward(x.as_tensor(), Mode::Train).unwrap();
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(x.as_tensor()).unwrap().clone()
            });
        }
        if what == "mm" {
            let k = c * 9;
            let a = Tensor::randn(0f32, 1., (c, k), &d)?;
            let bm = Tensor::randn(0f32, 1., (k, 128 * s * s), &d)?;
            t("matmul [O,K]x[K,BHW]", || a.matmul(&bm).unwrap());
            let g = Tensor::randn(0f32, 1., (c, 128 * s * s), &d)?;
            t("matmul [O,BHW]x[BHW,K]", || {
                g.matmul(&bm.t().unwrap()).unwrap()
            });
        }
    }
    Ok(())
}
