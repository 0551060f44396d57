#!/usr/bin/env python3
"""Foolbox 3 attack throughput on a Tulip-rs run's weights: the PyTorch side of the
attack cases of `cargo xtask bench` (run:deepfool-l2, run:deepfool-linf, run:pgd-l2,
run:pgd-linf, with `--run DIR`).

    python bench/torch/attack_bench.py RUN_DIR --attack deepfool-l2 --images 200

Loads the run's checkpoint into the PyTorch model with the reference's module names
(reference_check.py, beside this script), takes the first N test images of the run's
dataset (Fashion-MNIST or MNIST IDX files), attacks one batch untimed (warm-up), then
times one pass over all N images in batches of 100, with `tulip attack`'s settings:

  deepfool-l2/-linf  Foolbox's L2/LinfDeepFoolAttack: 50 steps, overshoot 0.02, every
                     class a candidate, loss on the logits
  pgd-l2             Foolbox's L2PGD at eps 0.5, 20 steps of 2.5/20 of eps, random start
  pgd-linf           Foolbox's LinfPGD at eps 0.1, the same steps

Foolbox's PGD always runs every step; `tulip attack`'s does too. Prints one line
`RESULT {json}` (median_s: the pass's seconds; images_per_s; peak_rss_mib).
Dependencies: torch, foolbox 3, safetensors, numpy (bench/torch/README.md).
"""

import argparse
import os
import resource
import sys
import time
import json
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_check as rc  # noqa: E402

BATCH = 100
ATTACKS = ("deepfool-l2", "deepfool-linf", "pgd-l2", "pgd-linf")


def make_attack(name, classes):
    import foolbox as fb

    if name == "deepfool-l2":
        return fb.attacks.L2DeepFoolAttack(steps=50, candidates=classes, overshoot=0.02,
                                           loss="logits"), None
    if name == "deepfool-linf":
        return fb.attacks.LinfDeepFoolAttack(steps=50, candidates=classes, overshoot=0.02,
                                             loss="logits"), None
    if name == "pgd-l2":
        return fb.attacks.L2PGD(rel_stepsize=2.5 / 20, steps=20, random_start=True), 0.5
    if name == "pgd-linf":
        return fb.attacks.LinfPGD(rel_stepsize=2.5 / 20, steps=20, random_start=True), 0.1
    rc.fail(f"unknown attack {name!r} ({', '.join(ATTACKS)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory written by `tulip train`")
    ap.add_argument("--attack", required=True, choices=ATTACKS)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--data", help=f"IDX directory [default: {rc.DEFAULT_DATA} for fashion-mnist]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    config = os.path.join(args.run, "config.toml")
    if not os.path.isfile(config):
        rc.fail(f"{args.run} is not a run directory of `tulip train` (no config.toml)")
    with open(config, "rb") as f:
        cfg = tomllib.load(f)
    mc, dataset = cfg["model"], cfg["dataset"]
    import torch
    import foolbox as fb

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = args.data or (rc.DEFAULT_DATA if dataset == "fashion-mnist" else cfg.get("data_dir"))
    if data is None:
        rc.fail("pass --data DIR")
    ck = next((p for p in (os.path.join(args.run, n) for n in
                           ("best.safetensors", "checkpoint.safetensors")) if os.path.isfile(p)),
              None)
    if ck is None:
        rc.fail(f"no checkpoint in {args.run}")
    model = rc.build_model(mc)
    rc.load_strict(model, ck, mc["architecture"])
    model.eval().to(args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = rc.load_test(data, args.images, mc["input_shape"])
    x, y = x.to(args.device), y.to(args.device)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=args.device)
    attack, eps = make_attack(args.attack, mc["classes"])

    def run(xs, ys):
        fooled = 0
        for i in range(0, len(xs), BATCH):
            _, _, ok = attack(fmodel, xs[i:i + BATCH], ys[i:i + BATCH], epsilons=eps)
            fooled += int(ok.sum().item())
        return fooled

    run(x[:BATCH], y[:BATCH])
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fooled = run(x, y)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({
        "model": "run", "kind": args.attack, "run": args.run, "images": len(x),
        "fooled": fooled, "median_s": seconds, "images_per_s": len(x) / seconds,
        "peak_rss_mib": peak, "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__, "foolbox": fb.__version__}), flush=True)


if __name__ == "__main__":
    main()
