//! Integration tests of the model zoo: shapes, parameter counts derived independently,
//! tensor names, batch norm modes, the linearised mode and checkpoints.

use candle_core::{DType, Device, Tensor};
use candle_nn::ModuleT;
use tulip_models::layers::{BatchNorm, Mode};
use tulip_models::{
    Architecture, BlockKind, Checkpoint, Classifier, Linearised, Model, ModelConfig, ModelError,
    ParamBuilder, ParamKind,
};

const FASHION: (usize, usize, usize) = (1, 28, 28);
const CIFAR: (usize, usize, usize) = (3, 32, 32);

fn model(cfg: &ModelConfig) -> Model {
    Model::init(cfg, 7, DType::F32, &Device::Cpu).expect("model builds")
}

/// The model's logits for `x` in evaluation mode, flattened.
fn eval_logits(m: &Model, x: &Tensor) -> Vec<f32> {
    let y = m.forward_t(x, false).unwrap();
    y.flatten_all().unwrap().to_vec1().unwrap()
}

fn input(shape: (usize, usize, usize), batch: usize, seed: u64) -> Tensor {
    let (c, h, w) = shape;
    let n = batch * c * h * w;
    // A cheap deterministic pseudo-random image in [0, 1).
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32 / 1000.0)
        .collect();
    Tensor::from_vec(v, (batch, c, h, w), &Device::Cpu).unwrap()
}

#[test]
fn every_architecture_runs_on_both_input_shapes() {
    for arch in Architecture::ALL {
        for shape in [FASHION, CIFAR] {
            let cfg = ModelConfig::new(arch, 10, shape);
            let m = model(&cfg);
            let x = input(shape, 2, 1);
            for train in [true, false] {
                let y = m.forward_t(&x, train).unwrap();
                assert_eq!(y.dims(), &[2, 10], "{arch} on {shape:?}, train={train}");
                let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                assert!(v.iter().all(|x| x.is_finite()), "{arch}: non-finite logits");
            }
        }
    }
}

/// Parameter counts computed from the layer sizes of docs/method.md §4, independently of
/// the model code: `conv(i, o, k, bias)`, affine batch norm `2c`, linear `i·o + o`.
fn expected_param_count(cfg: &ModelConfig) -> usize {
    let k2 = cfg.kernel_size * cfg.kernel_size;
    let (cin, _, _) = cfg.input_shape;
    let bn = cfg.batch_norm;
    let conv = |i: usize, o: usize, k2: usize, bias: bool| i * o * k2 + if bias { o } else { 0 };
    let affine_bn = |c: usize| if bn { 2 * c } else { 0 };
    let tanh = usize::from(cfg.tanh); // the scalar t
    let classes = cfg.classes;
    match cfg.architecture.resnet_spec() {
        None => {
            // AllCNN: convs with bias, batch norms without affine terms.
            let (c1, c2) = (96, 192);
            conv(cin, c1, k2, true)
                + 2 * conv(c1, c1, k2, true)
                + conv(c1, c2, k2, true)
                + 4 * conv(c2, c2, k2, true)
                + conv(c2, classes, 1, true)
                + tanh
        }
        Some(spec) => {
            let mut total = conv(cin, spec.stem_width, k2, true);
            let mut c = spec.stem_width;
            for (&n, &w) in spec.blocks.iter().zip(&spec.widths) {
                for _ in 0..n {
                    if c != w {
                        total += conv(c, w, 1, !bn) + affine_bn(w);
                    }
                    total += match spec.block {
                        BlockKind::Basic => 2 * conv(w, w, k2, !bn) + 2 * affine_bn(w),
                        BlockKind::Branch { branches: b } => {
                            conv(w, b * w, k2, !bn)
                                + conv(b * w / b, b * w, k2, !bn)
                                + 2 * affine_bn(b * w)
                        }
                    };
                    c = w;
                }
            }
            total + c * classes + classes + tanh
        }
    }
}

#[test]
fn parameter_counts_match_the_layer_formulas() {
    for arch in Architecture::ALL {
        for (bn, tanh, k, shape) in [
            (true, false, 3, CIFAR),
            (false, true, 5, FASHION),
            (true, true, 3, FASHION),
        ] {
            let cfg = ModelConfig {
                batch_norm: bn,
                tanh,
                kernel_size: k,
                ..ModelConfig::new(arch, 10, shape)
            };
            let m = model(&cfg);
            assert_eq!(
                m.params().trainable_count(),
                expected_param_count(&cfg),
                "{arch} bn={bn} tanh={tanh} k={k}"
            );
        }
    }
}

#[test]
fn well_known_sizes() {
    // Hand-derived totals for the reference configurations (3×32×32, 10 classes, bn):
    // AllCNN: 2,688 + 2·83,040 + 166,080 + 4·331,968 + 1,930.
    let allcnn = model(&ModelConfig::new(Architecture::AllCnn, 10, CIFAR));
    assert_eq!(allcnn.params().trainable_count(), 1_664_650);
    // ResNet22: stem 448; stage 1: 3 blocks of 2·2,304 + 64; stage 2: fcc 512 + 64, 3
    // blocks of 2·9,216 + 128; stage 3: fcc 2,048 + 128, 3 blocks of 2·36,864 + 256; fc 650.
    let r22 = model(&ModelConfig::new(Architecture::ResNet22, 10, CIFAR));
    let stage1 = 3 * (2 * 2_304 + 64);
    let stage2 = 512 + 64 + 3 * (2 * 9_216 + 128);
    let stage3 = 2_048 + 128 + 3 * (2 * 36_864 + 256);
    assert_eq!(
        r22.params().trainable_count(),
        448 + stage1 + stage2 + stage3 + 650
    );
}

fn names_snapshot(cfg: &ModelConfig) -> String {
    let m = model(cfg);
    m.params()
        .all()
        .iter()
        .map(|p| {
            let kind = match p.kind {
                ParamKind::Trainable => "param",
                ParamKind::Buffer => "buffer",
            };
            format!("{} {:?} {kind}\n", p.name, p.var.dims())
        })
        .collect()
}

/// Tensor names and shapes are a public API (PyTorch `state_dict` compatibility): any
/// change must be deliberate. Set `UPDATE_SNAPSHOTS=1` to rewrite the files after one.
#[test]
fn tensor_names_are_stable() {
    let cases = [
        ("allcnn", ModelConfig::new(Architecture::AllCnn, 10, CIFAR)),
        (
            "resnet22-tanh",
            ModelConfig {
                tanh: true,
                ..ModelConfig::new(Architecture::ResNet22, 10, CIFAR)
            },
        ),
        (
            "resnet22-nobn",
            ModelConfig {
                batch_norm: false,
                ..ModelConfig::new(Architecture::ResNet22, 10, FASHION)
            },
        ),
        (
            "resnext34",
            ModelConfig::new(Architecture::ResNeXt34, 10, CIFAR),
        ),
        (
            "wrn-16-4",
            ModelConfig::new(Architecture::Wrn16_4, 100, CIFAR),
        ),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    for (name, cfg) in cases {
        let got = names_snapshot(&cfg);
        let path = dir.join(format!("{name}.txt"));
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_SNAPSHOTS=1)", path.display()));
        assert_eq!(got, want, "tensor names of {name} changed");
    }
}

#[test]
fn spec_names_are_present() {
    let m = model(&ModelConfig {
        tanh: true,
        ..ModelConfig::new(Architecture::ResNet22, 10, CIFAR)
    });
    for name in [
        "layer0.0.weight",
        "layer0.0.bias",
        "layer0.1.running_mean",
        "layer1.0.convs.0.weight",
        "layer1.0.bns.1.bias",
        "layer2.0.fcc.0.weight",
        "layer2.0.fcc.1.running_var",
        "layer3.2.convs.1.weight",
        "fc.weight",
        "fc.bias",
        "bn.running_mean",
        "t",
    ] {
        assert!(m.params().get(name).is_some(), "missing {name}");
    }
    // Batch norm without affine has no weight; a same-width block has no fcc.
    assert!(m.params().get("layer0.1.weight").is_none());
    assert!(m.params().get("layer1.0.fcc.0.weight").is_none());
    let a = model(&ModelConfig::new(Architecture::AllCnn, 10, CIFAR));
    for name in [
        "m.0.0.weight",
        "m.0.0.bias",
        "m.0.1.running_var",
        "m.10.0.weight",
    ] {
        assert!(a.params().get(name).is_some(), "missing {name}");
    }
    assert!(a.params().get("m.3.0.weight").is_none(), "m.3 is dropout");
}

#[test]
fn width_changing_convolution_rows_are_softmax_normalised() {
    let m = model(&ModelConfig::new(Architecture::ResNet22, 10, CIFAR));
    let w = m
        .params()
        .get("layer2.0.fcc.0.weight")
        .unwrap()
        .var
        .as_tensor()
        .clone();
    assert_eq!(w.dims(), &[32, 16, 1, 1]);
    let rows: Vec<Vec<f32>> = w.reshape((32, 16)).unwrap().to_vec2().unwrap();
    for row in rows {
        assert!(row.iter().all(|&v| v > 0.0));
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn same_seed_same_model_other_seed_other_model() {
    let cfg = ModelConfig::new(Architecture::ResNet22, 10, FASHION);
    let x = input(FASHION, 3, 2);
    let a = Model::init(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let b = Model::init(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let c = Model::init(&cfg, 2, DType::F32, &Device::Cpu).unwrap();
    let ya = eval_logits(&a, &x);
    let yb = eval_logits(&b, &x);
    let yc = eval_logits(&c, &x);
    assert_eq!(ya, yb);
    assert_ne!(ya, yc);
}

#[test]
fn batch_norm_train_and_eval_modes() {
    let pb = ParamBuilder::new(0, DType::F64, &Device::Cpu);
    let bn = BatchNorm::new(2, false, pb.clone()).unwrap();
    // Channel 0 holds 1..=8, channel 1 holds 10·(1..=8): batch of 2, 2×2 images.
    let mut v = Vec::new();
    for b in 0..2 {
        for c in 0..2 {
            for i in 0..4 {
                let x = (b * 4 + i + 1) as f64;
                v.push(if c == 0 { x } else { 10.0 * x });
            }
        }
    }
    let x = Tensor::from_vec(v, (2, 2, 2, 2), &Device::Cpu).unwrap();
    let y = bn.forward(&x, Mode::Train).unwrap();
    // Train mode: each channel normalised by its batch statistics.
    let mean = 4.5;
    let var_biased: f64 = (1..=8).map(|i| (i as f64 - mean).powi(2)).sum::<f64>() / 8.0;
    let var_unbiased = var_biased * 8.0 / 7.0;
    let y0: f64 = y
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0];
    assert!((y0 - (1.0 - mean) / (var_biased + 1e-5).sqrt()).abs() < 1e-9);
    let params = pb.params();
    let rm: Vec<f64> = params.get("running_mean").unwrap().var.to_vec1().unwrap();
    let rv: Vec<f64> = params.get("running_var").unwrap().var.to_vec1().unwrap();
    assert!((rm[0] - 0.1 * mean).abs() < 1e-12 && (rm[1] - 0.1 * 10.0 * mean).abs() < 1e-12);
    assert!((rv[0] - (0.9 + 0.1 * var_unbiased)).abs() < 1e-12);
    assert!((rv[1] - (0.9 + 0.1 * 100.0 * var_unbiased)).abs() < 1e-9);
    // Eval mode uses the running statistics and leaves them alone.
    let e = bn.forward(&x, Mode::Eval).unwrap();
    let e0: f64 = e.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
    assert!((e0 - (1.0 - rm[0]) / (rv[0] + 1e-5).sqrt()).abs() < 1e-9);
    let rm_after: Vec<f64> = params.get("running_mean").unwrap().var.to_vec1().unwrap();
    assert_eq!(rm, rm_after);
}

#[test]
fn model_train_mode_updates_running_stats_and_eval_does_not() {
    let m = model(&ModelConfig::new(Architecture::ResNet22, 10, FASHION));
    let x = input(FASHION, 4, 3);
    let stats = |m: &Model| -> Vec<f32> {
        m.params()
            .get("layer1.0.bns.0.running_mean")
            .unwrap()
            .var
            .to_vec1()
            .unwrap()
    };
    let before = stats(&m);
    m.forward_t(&x, false).unwrap();
    assert_eq!(stats(&m), before, "eval forward changed running statistics");
    m.forward_t(&x, true).unwrap();
    assert_ne!(
        stats(&m),
        before,
        "train forward did not update running statistics"
    );
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let d: f64 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap();
    let s: f64 = a
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        d <= tol * (1.0 + s),
        "{what}: max difference {d} (scale {s})"
    );
}

#[test]
fn linearised_model_is_affine() {
    for arch in [
        Architecture::AllCnn,
        Architecture::ResNet22,
        Architecture::ResNeXt34,
    ] {
        let cfg = ModelConfig {
            tanh: true,
            ..ModelConfig::new(arch, 10, FASHION)
        };
        let m = Model::init(&cfg, 3, DType::F64, &Device::Cpu).unwrap();
        let x = input(FASHION, 2, 4).to_dtype(DType::F64).unwrap();
        let y = input(FASHION, 2, 5)
            .to_dtype(DType::F64)
            .unwrap()
            .affine(3.0, -1.0)
            .unwrap();
        let a = 0.3;
        let mix = ((&x * a).unwrap() + (&y * (1.0 - a)).unwrap()).unwrap();
        let f = |t: &Tensor| m.forward_linearised(t).unwrap();
        let lhs = f(&mix);
        let rhs = ((f(&x) * a).unwrap() + (f(&y) * (1.0 - a)).unwrap()).unwrap();
        assert_close(&lhs, &rhs, 1e-9, &format!("{arch} linearised"));
        // The ordinary eval-mode model is not affine (ReLU and tanh).
        let g = |t: &Tensor| m.forward_t(t, false).unwrap();
        let nl = ((g(&x) * a).unwrap() + (g(&y) * (1.0 - a)).unwrap()).unwrap();
        let diff: f64 = (g(&mix) - nl)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff > 1e-6, "{arch}: eval model looks affine ({diff})");
    }
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() {
    let cfg = ModelConfig {
        tanh: true,
        ..ModelConfig::new(Architecture::ResNet22, 10, FASHION)
    };
    let a = model(&cfg);
    let x = input(FASHION, 4, 6);
    a.forward_t(&x, true).unwrap(); // move the running statistics off their init
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let mut ck = Checkpoint::from_params(a.params());
    ck.metadata.insert("epoch".into(), "3".into());
    ck.write(&path).unwrap();
    assert!(!dir.path().join("m.safetensors.tmp").exists());

    let b = Model::init(&cfg, 99, DType::F32, &Device::Cpu).unwrap();
    let read = Checkpoint::read(&path, &Device::Cpu).unwrap();
    assert_eq!(read.metadata.get("epoch").map(String::as_str), Some("3"));
    read.load_into(b.params(), &path).unwrap();
    let ya = eval_logits(&a, &x);
    let yb = eval_logits(&b, &x);
    assert_eq!(ya, yb);
}

#[test]
fn loading_a_mismatched_checkpoint_lists_the_offenders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.safetensors");
    // A checkpoint of another configuration: no tanh layer, 5 classes.
    let other = model(&ModelConfig::new(Architecture::ResNet22, 5, FASHION));
    let mut ck = Checkpoint::from_params(other.params());
    ck.tensors.insert(
        "extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    ck.write(&path).unwrap();

    let target = model(&ModelConfig {
        tanh: true,
        ..ModelConfig::new(Architecture::ResNet22, 10, FASHION)
    });
    let before: Vec<f32> = target
        .params()
        .get("fc.bias")
        .unwrap()
        .var
        .to_vec1()
        .unwrap();
    let err = Checkpoint::read(&path, &Device::Cpu)
        .unwrap()
        .load_into(target.params(), &path)
        .unwrap_err();
    assert!(matches!(err, ModelError::CheckpointMismatch { .. }));
    let msg = err.to_string();
    for needle in [
        "other.safetensors",
        "missing tensors: bn.running_mean",
        "t",
        "unexpected tensors: extra.weight",
        "fc.weight: expected [10, 64], found [5, 64]",
    ] {
        assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    }
    let after: Vec<f32> = target
        .params()
        .get("fc.bias")
        .unwrap()
        .var
        .to_vec1()
        .unwrap();
    assert_eq!(before, after, "a failed load must not modify the model");
}

#[test]
fn unreadable_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let err = Checkpoint::read(&missing, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.safetensors"), "{err}");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let err = Checkpoint::read(&garbage, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("garbage.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
}

/// A byte flipped anywhere in a checkpoint — a weight, the optimizer state, a metadata
/// value — is an error that calls the file corrupt, never a silently different model.
#[test]
fn a_flipped_byte_anywhere_in_a_checkpoint_is_a_clear_error() {
    let a = model(&ModelConfig::new(Architecture::ResNet8, 10, FASHION));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let mut ck = Checkpoint::from_params(a.params());
    ck.metadata.insert("epoch".into(), "3".into());
    ck.write(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    Checkpoint::read(&path, &Device::Cpu).expect("an untouched file reads");

    // Where the metadata value "3" of "epoch" sits in the JSON header.
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + header_len]).unwrap();
    let epoch_value = 8 + header.find("\"epoch\":\"3\"").unwrap() + "\"epoch\":\"".len();
    // The first and last data bytes, and one in the middle.
    for (at, flip) in [
        (epoch_value, b'3' ^ b'7'),
        (8 + header_len, 0x01),
        (8 + header_len + (good.len() - 8 - header_len) / 2, 0x80),
        (good.len() - 1, 0x10),
    ] {
        let mut bytes = good.clone();
        bytes[at] ^= flip;
        std::fs::write(&path, &bytes).unwrap();
        let err = Checkpoint::read(&path, &Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("byte {at} flipped and the file still reads"));
        assert!(
            matches!(err, ModelError::CorruptCheckpoint { .. }),
            "byte {at}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("m.safetensors") && msg.contains("corrupt"),
            "{msg}"
        );
    }
}

#[test]
fn invalid_configurations_are_rejected() {
    let base = ModelConfig::new(Architecture::ResNet22, 10, FASHION);
    for (cfg, needle) in [
        (
            ModelConfig {
                kernel_size: 4,
                ..base.clone()
            },
            "kernel size",
        ),
        (
            ModelConfig {
                dropout: 1.5,
                ..base.clone()
            },
            "dropout",
        ),
        (
            ModelConfig {
                classes: 1,
                ..base.clone()
            },
            "classes",
        ),
    ] {
        let err = Model::init(&cfg, 0, DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}

/// Inside `frozen_parameters` the model computes the same logits and input gradient as
/// outside, in both modes, leaves every parameter out of the backward pass, and shares the
/// model's storage (an update of a parameter shows through; train mode moves the same
/// running statistics).
#[test]
fn frozen_parameters_give_the_input_gradient_without_parameter_gradients() {
    use candle_core::Var;
    use tulip_models::grad_mode::frozen_parameters;
    for arch in [
        Architecture::ResNet8,
        Architecture::AllCnn,
        Architecture::ResNeXt34,
    ] {
        let cfg = ModelConfig {
            tanh: true,
            ..ModelConfig::new(arch, 10, FASHION)
        };
        let m = model(&cfg);
        let frozen = m.frozen_view().unwrap();
        assert_eq!(frozen.params().names(), m.params().names(), "{arch}");
        let x = Var::from_tensor(&input(FASHION, 3, 5)).unwrap();
        for train in [false, true] {
            let own = m.forward_t(x.as_tensor(), train).unwrap();
            let grads = own.sum_all().unwrap().backward().unwrap();
            let via = frozen_parameters(|| m.forward_t(x.as_tensor(), train)).unwrap();
            let frozen_grads = via.sum_all().unwrap().backward().unwrap();
            assert_close(&via, &own, 0.0, "frozen logits");
            // In evaluation mode the frozen view's fused convolution computes the same
            // gradient in another order (the batch norm's scale folded into the kernel):
            // equal to a few ulps of its largest entry, not bit for bit.
            let (ours, theirs) = (
                frozen_grads.get(x.as_tensor()).unwrap(),
                grads.get(x.as_tensor()).unwrap(),
            );
            let largest = theirs
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let largest: f64 = largest.to_scalar().unwrap();
            assert_close(ours, theirs, 1e-6 * largest, "frozen input gradient");
            for p in m.params().trainable() {
                assert!(grads.get(p.var.as_tensor()).is_some(), "{arch}: {}", p.name);
                assert!(
                    frozen_grads.get(p.var.as_tensor()).is_none(),
                    "{arch}: the frozen view differentiated {}",
                    p.name
                );
            }
        }
        // Train mode through the view moved the model's own running statistics.
        let moved = m
            .params()
            .all()
            .iter()
            .filter(|p| p.kind == ParamKind::Buffer && p.name.ends_with("running_mean"))
            .any(|p| {
                p.var
                    .as_tensor()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            });
        assert!(
            moved || !cfg.batch_norm,
            "{arch}: running statistics untouched"
        );

        // A parameter update shows through the view.
        let before = frozen.forward_t(x.as_tensor(), false).unwrap();
        let p = m.params().trainable().next().unwrap();
        p.var.set(&(p.var.as_tensor() * 2.0).unwrap()).unwrap();
        let after = frozen.forward_t(x.as_tensor(), false).unwrap();
        assert_close(
            &after,
            &m.forward_t(x.as_tensor(), false).unwrap(),
            0.0,
            "after update",
        );
        let change = (after - before).unwrap().abs().unwrap().max_all().unwrap();
        let change = change.to_scalar::<f32>().unwrap();
        assert!(change > 1e-6, "{arch}: update not visible ({change})");
    }
}

/// `predict` gives the evaluation-mode logits, and records no graph (a result that
/// tracks no operation holds none of the activations behind it).
#[test]
fn predict_gives_eval_logits_without_a_graph() {
    let m = model(&ModelConfig::new(Architecture::ResNet8, 10, FASHION));
    let x = input(FASHION, 4, 9);
    let through_model = m.forward_t(&x, false).unwrap();
    assert!(
        through_model.track_op(),
        "the model's own pass records a graph"
    );
    let predicted = tulip_models::predict(&m, &x).unwrap();
    assert!(!predicted.track_op());
    assert_close(&predicted, &through_model, 0.0, "predict");
}
