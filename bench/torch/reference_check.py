#!/usr/bin/env python3
"""Cross-check a Tulip-rs run against PyTorch and Foolbox 3.

Given a run directory written by `tulip train` (then `tulip eval RUN` and
`tulip attack RUN --attack deepfool --norm l2 ...`), this script

1. rebuilds the run's network in PyTorch from its config.toml, with the module
   names of the reference code (layer0, layer{s}.{j}.fcc/convs/bns, fc, bn, t;
   m.{i} for All-CNN), and loads the checkpoint strictly: every tensor used,
   every shape checked (the checkpoint `tulip eval` uses by default:
   best.safetensors, else checkpoint.safetensors);
2. loads the Fashion-MNIST (or MNIST) test set from its IDX files, pixels / 255,
   no normalisation, the first N images in file order;
3. computes, model in evaluation mode (batch norm on running statistics), the
   test error, the mean cross-entropy and the Lipschitz estimate of eval.json:
   max over the evaluated images of the per-example, unscaled ||grad_x CE_i||_2;
4. runs Foolbox 3's L2 DeepFool (steps 50, overshoot 0.02, every class a
   candidate: `tulip attack`'s defaults) on the first N test images, bounds
   (0, 1), and summarises it as `tulip attack` does: already misclassified
   images count as distance 0, failures are left out of the median and mean;
5. prints quantity | PyTorch/Foolbox | tulip | relative difference, image-by-image
   DeepFool diagnostics (images failed by one side only; the median over the
   images both sides fooled), and a one-line verdict (test error within 0.1
   point, Lipschitz estimate within 1e-3 relative, DeepFool median within 1 %).
   The exit status is 0 whatever the agreement. `tulip attack`'s DeepFool steps
   as Foolbox 1.x did, not as Foolbox 3: bench/torch/README.md says what
   difference to expect.

Dependencies (optional for the project, needed here): Python >= 3.11 (tomllib),
torch, foolbox 3, safetensors, numpy. See bench/torch/README.md.

    python bench/torch/reference_check.py RUN_DIR [--json out.json]
"""

import argparse
import gzip
import json
import math
import os
import statistics
import sys
import tomllib

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
# (blocks per stage, stem width, stage widths, block kind); docs/method.md §4.
RESNETS = {
    "resnet8": ([1, 1, 1], 16, [16, 32, 64], "basic"),
    "resnet22": ([3, 3, 3], 16, [16, 32, 64], "basic"),
    "resnet34": ([5, 5, 5], 16, [16, 32, 64], "basic"),
    "resnext34": ([5, 5, 5], 32, [32, 64, 128], "branch"),
}
for _d, _k in [(16, 4), (16, 8), (22, 4), (28, 10), (40, 4)]:
    _n = (_d - 4) // 6
    RESNETS[f"wrn-{_d}-{_k}"] = ([_n] * 3, 16, [16 * _k, 32 * _k, 64 * _k], "basic")
TOLERANCES = {"test error (%)": ("abs", 0.1), "Lipschitz estimate": ("rel", 1e-3),
              "DeepFool L2 median": ("rel", 1e-2)}


def fail(msg):
    sys.exit(f"reference_check: {msg}")


def build_model(mc):
    """The network of config [model] `mc`, with the reference's module names."""
    import torch
    from torch import nn

    arch, k, bn = mc["architecture"], mc["kernel_size"], mc["batch_norm"]
    c_in, classes = mc["input_shape"][0], mc["classes"]

    def width_change(cin, cout):  # fcc: 1x1 conv (+ affine batch norm)
        return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=not bn),
                             *([nn.BatchNorm2d(cout)] if bn else []))

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, pool):
            super().__init__()
            self.fcc = width_change(cin, cout) if cin != cout else None
            self.convs = nn.ModuleList(
                [nn.Conv2d(cout, cout, k, padding=k // 2, bias=not bn) for _ in range(2)])
            self.bns = nn.ModuleList([nn.BatchNorm2d(cout) for _ in range(2)]) if bn else None
            self.avg = nn.AvgPool2d(2) if pool else None

        def forward(self, x):
            if self.fcc is not None:
                x = torch.relu(self.fcc(x))
            y = self.convs[0](x)
            y = torch.relu(self.bns[0](y) if bn else y)
            y = self.convs[1](y)
            y = torch.relu(x + (self.bns[1](y) if bn else y))
            return self.avg(y) if self.avg is not None else y

    class BranchBlock(nn.Module):
        def __init__(self, cin, cout, pool, branches=2):
            super().__init__()
            self.branches, w = branches, cout * branches
            self.fcc = width_change(cin, cout) if cin != cout else None
            self.conv0 = nn.Conv2d(cout, w, k, padding=k // 2, bias=not bn)
            self.conv1 = nn.Conv2d(w, w, k, padding=k // 2, groups=branches, bias=not bn)
            self.bn0, self.bn1 = (nn.BatchNorm2d(w), nn.BatchNorm2d(w)) if bn else (None, None)
            self.avg = nn.AvgPool2d(2) if pool else None

        def forward(self, x):
            if self.fcc is not None:
                x = torch.relu(self.fcc(x))
            y = self.conv0(x)
            y = torch.relu(self.bn0(y) if bn else y)
            y = self.conv1(y)
            y = self.bn1(y) if bn else y
            b, c, h, w = y.shape  # channels branch-major: average the branches
            y = torch.relu(x + y.view(b, self.branches, c // self.branches, h, w).mean(1))
            return self.avg(y) if self.avg is not None else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            if arch == "allcnn":
                def unit(ci, co, kk, stride=1):
                    return nn.Sequential(
                        nn.Conv2d(ci, co, kk, stride=stride, padding=kk // 2, bias=True),
                        *([nn.BatchNorm2d(co, affine=False)] if bn else []), nn.ReLU())
                c1, c2 = 96, 192
                self.m = nn.Sequential(
                    unit(c_in, c1, k), unit(c1, c1, k), unit(c1, c1, k, 2), nn.Identity(),
                    unit(c1, c2, k), unit(c2, c2, k), unit(c2, c2, k, 2), nn.Identity(),
                    unit(c2, c2, k), unit(c2, c2, k), unit(c2, classes, 1),
                    nn.Identity(), nn.Identity())  # dropout (3, 7), pool, flatten
            elif arch in RESNETS:
                blocks, stem, widths, kind = RESNETS[arch]
                block = BasicBlock if kind == "basic" else BranchBlock
                self.layer0 = nn.Sequential(
                    nn.Conv2d(c_in, stem, k, padding=k // 2, bias=True),
                    *([nn.BatchNorm2d(stem, affine=False)] if bn else []), nn.ReLU())
                cin = stem
                for s, (n, w) in enumerate(zip(blocks, widths)):
                    stage = [block(cin if j == 0 else w, w, s > 0 and j == 0) for j in range(n)]
                    setattr(self, f"layer{s + 1}", nn.Sequential(*stage))
                    cin = w
                self.fc = nn.Linear(cin, classes)
            else:
                fail(f"architecture {arch!r} is not supported (supported: allcnn, "
                     f"{', '.join(RESNETS)})")
            if mc["tanh"]:
                self.bn = nn.BatchNorm1d(classes, affine=False)
                self.t = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            if arch == "allcnn":
                z = self.m(x).mean(dim=(2, 3))
            else:
                x = self.layer0(x)
                x = self.layer3(self.layer2(self.layer1(x)))
                z = self.fc(x.mean(dim=(2, 3)))
            if mc["tanh"]:
                t = self.t.abs()
                z = t * torch.tanh(self.bn(z) / t)
            return z

    return Net()


def load_strict(model, path, mc_name):
    """Loads `path` into `model`: every model tensor present with its shape, none left over."""
    from safetensors.torch import load_file

    tensors = {n: t for n, t in load_file(path).items() if not n.startswith("optimizer.")}
    state = model.state_dict()
    wanted = {n for n in state if not n.endswith("num_batches_tracked")}
    missing = sorted(wanted - tensors.keys())
    extra = sorted(n for n in tensors.keys() - state.keys())
    shapes = [f"{n} {tuple(t.shape)} (model {tuple(state[n].shape)})"
              for n, t in tensors.items() if n in state and t.shape != state[n].shape]
    if missing or extra or shapes:
        some = lambda v, sep: sep.join(v[:6]) + (f" and {len(v) - 6} more" if len(v) > 6 else "")
        fail(f"{path} does not fit the model of config.toml ({mc_name}):"
             + (f"\n  missing: {some(missing, ', ')}" if missing else "")
             + (f"\n  unused: {some(extra, ', ')}" if extra else "")
             + (f"\n  shapes: {some(shapes, '; ')}" if shapes else ""))
    for n in state.keys() - tensors.keys():  # num_batches_tracked: keep the model's
        tensors[n] = state[n]
    model.load_state_dict({n: t.float() if t.is_floating_point() else t
                           for n, t in tensors.items()}, strict=True)


def read_idx(path):
    """An IDX file (raw or .gz) as a numpy array of its dimensions."""
    import numpy as np

    for p in (path + ".gz", path):
        if os.path.isfile(p):
            with (gzip.open if p.endswith(".gz") else open)(p, "rb") as f:
                data = f.read()
            break
    else:
        fail(f"no {path}[.gz]: pass --data DIR holding the dataset's IDX files")
    if data[:2] != b"\0\0" or data[2] != 8:
        fail(f"{p}: not an unsigned-byte IDX file")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def load_test(data_dir, n, shape):
    import torch

    x = read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte"))[:n]
    y = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte"))[:n]
    x = torch.from_numpy(x.copy()).float().div(255.0).reshape(len(x), *shape)
    return x, torch.from_numpy(y.astype("int64"))


def evaluate(model, x, y, batch):
    """Test error %, mean CE (f64) and max_i ||grad_x CE_i||_2, evaluation mode."""
    import torch
    import torch.nn.functional as F

    correct, loss_sum, lip = 0, 0.0, 0.0
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch].clone().requires_grad_(True), y[i:i + batch]
        z = model(xb)
        ce = F.cross_entropy(z, yb, reduction="none")
        g, = torch.autograd.grad(ce.sum(), xb)  # rows independent in eval mode
        lip = max(lip, g.flatten(1).norm(dim=1).max().item())
        loss_sum += F.cross_entropy(z.detach().double(), yb, reduction="sum").item()
        correct += (z.argmax(1) == yb).sum().item()
    return 100.0 * (1 - correct / len(x)), loss_sum / len(x), lip


def deepfool(model, x, y, args, classes):
    """Foolbox 3 L2 DeepFool; per image (status, L2 distance) as `tulip attack` counts."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = fb.attacks.L2DeepFoolAttack(steps=args.steps, candidates=classes,
                                         overshoot=args.overshoot, loss="logits")
    out = []
    for i in range(0, len(x), args.batch_size):
        xb, yb = x[i:i + args.batch_size], y[i:i + args.batch_size]
        clean = model(xb).argmax(1) != yb
        _, adv, ok = attack(fmodel, xb, yb, epsilons=None)
        d = (adv - xb).flatten(1).norm(dim=1)
        for c, s, v in zip(clean.tolist(), ok.tolist(), d.tolist()):
            out.append(("already-misclassified", 0.0) if c else
                       ("found", v) if s else ("failed", math.nan))
    return out


def summarise(records):
    """Counts by status, median and mean L2 of the misclassified images (failures left out)."""
    d = [v for s, v in records if s != "failed"]
    count = {s: sum(r[0] == s for r in records)
             for s in ("found", "already-misclassified", "failed")}
    return count, (statistics.median(d) if d else None), (statistics.fmean(d) if d else None)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def read_attack_csv(path):
    """`tulip attack`'s per-image CSV as (status, L2) records, read as the project reads it."""
    import csv

    with open(path) as f:
        return [("failed", math.nan) if r["success"] == "0" else
                ("already-misclassified", 0.0) if float(r["l2"]) == float(r["linf"]) == 0 else
                ("found", float(r["l2"])) for r in csv.DictReader(f)]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory written by `tulip train`")
    ap.add_argument("--data", help=f"IDX directory [default: {DEFAULT_DATA} for fashion-mnist]")
    ap.add_argument("--checkpoint", help="[default: best.safetensors, else checkpoint.safetensors]")
    ap.add_argument("--eval-images", type=int, help="[default: eval.json's count, else 10000]")
    ap.add_argument("--images", type=int,
                    help="images to attack, 0: none [default: the attack CSV's count, else 100]")
    ap.add_argument("--attack-dir", help="where `tulip attack` wrote [default: RUN/attacks]")
    ap.add_argument("--steps", type=int, default=50, help="DeepFool steps [50, as tulip]")
    ap.add_argument("--overshoot", type=float, default=0.02, help="[0.02, as tulip]")
    ap.add_argument("--batch-size", type=int, default=10, help="images attacked together")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    args = ap.parse_args()

    if not os.path.isfile(os.path.join(args.run, "config.toml")):
        fail(f"{args.run} is not a run directory of `tulip train` (no config.toml)")
    with open(os.path.join(args.run, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    mc, dataset = cfg["model"], cfg["dataset"]
    try:
        import foolbox, numpy, safetensors, torch  # noqa: F401
    except ImportError as e:
        fail(f"{e}: pip install torch foolbox safetensors numpy (see bench/torch/README.md)")
    torch.set_num_threads(args.threads)
    if dataset not in ("fashion-mnist", "mnist"):
        fail(f"dataset {dataset!r} is not supported (fashion-mnist and mnist are)")
    data = args.data or (DEFAULT_DATA if dataset == "fashion-mnist" else cfg.get("data_dir"))
    if data is None:
        fail("pass --data DIR (the run's dataset is mnist)")
    ck = args.checkpoint or next((p for p in (os.path.join(args.run, n) for n in
                                  ("best.safetensors", "checkpoint.safetensors"))
                                  if os.path.isfile(p)), None)
    if ck is None:
        fail(f"no checkpoint in {args.run}: pass --checkpoint FILE")
    model = build_model(mc)
    load_strict(model, ck, mc["architecture"] + (" + tanh" if mc["tanh"] else ""))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    ev = read_json(os.path.join(args.run, "eval.json"))
    adir = args.attack_dir or os.path.join(args.run, "attacks")
    at = read_json(os.path.join(adir, "deepfool-l2.json"))
    csv_path = os.path.join(adir, "deepfool-l2.csv")
    theirs = read_attack_csv(csv_path) if os.path.isfile(csv_path) else None
    if ev and os.path.basename(ev.get("checkpoint", ck)) != os.path.basename(ck):
        print(f"note: eval.json was computed on {ev['checkpoint']}, not {ck}: not compared")
        ev = None
    n_eval = args.eval_images if args.eval_images is not None else (ev or {}).get("images", 10000)
    n_att = args.images if args.images is not None else (
        len(theirs) if theirs else (at or {}).get("images", 100))
    if ev and ev["images"] != n_eval:
        print(f"note: eval.json is over {ev['images']} images, not {n_eval}: not compared")
        ev = None
    if theirs is not None:  # the project's summary, recomputed from its per-image rows
        if at and len(theirs) == at["images"] and summarise(theirs)[1] != at["l2"]["median"]:
            print(f"note: {csv_path} and its .json disagree on the median")
        if len(theirs) < n_att:
            print(f"note: tulip attacked {len(theirs)} images, not {n_att}: not compared")
            theirs = None
        else:
            theirs = theirs[:n_att]
    print(f"{args.run}: {mc['architecture']}{' + tanh' if mc['tanh'] else ''}, {ck}; "
          f"{n_eval} test images evaluated, {n_att} attacked")

    x, y = load_test(data, max(n_eval, n_att), mc["input_shape"])
    err, loss, lip = evaluate(model, x[:n_eval], y[:n_eval], 500)
    rows = [("test error (%)", err, ev and ev["test_error_percent"]),
            ("mean cross-entropy", loss, ev and ev["mean_loss"]),
            ("Lipschitz estimate", lip, ev and ev["lipschitz_estimate"])]
    if mc["tanh"]:
        rows.append(("tanh scale |t|", model.t.abs().item(), ev and ev["tanh_scale"]))
    if n_att:
        ours = deepfool(model, x[:n_att], y[:n_att], args, mc["classes"])
        (c, median, mean), t = summarise(ours), summarise(theirs or [])
        has = theirs is not None
        rows += [("DeepFool images", len(ours), has and len(theirs) or None)]
        rows += [(f"DeepFool {k.replace('-', ' ')}", c[k], t[0][k] if has else None)
                 for k in ("found", "already-misclassified", "failed")]
        rows += [("DeepFool L2 median", median, t[1] if has else None),
                 ("DeepFool L2 mean", mean, t[2] if has else None)]
    if n_att and theirs:  # diagnostics, image by image
        pairs = list(zip(ours, theirs))
        rows.append(("DeepFool images failed by one side only",
                     sum((a == "failed") != (b == "failed") for (a, _), (b, _) in pairs), None))
        both = [(v, w) for (a, v), (b, w) in pairs if a == b == "found"]
        if both:
            rows.append(("DeepFool L2 median, images both found",
                         statistics.median(v for v, _ in both),
                         statistics.median(w for _, w in both)))
            rel = [abs(v - w) / w for v, w in both]
            rows.append(("DeepFool per-image |rel diff|, median", statistics.median(rel), None))
            rows.append(("DeepFool per-image |rel diff|, max", max(rel), None))

    report(rows, args, ck)


def report(rows, args, ck):
    """Prints the table and the verdict; writes them as JSON if asked."""
    table, bad = [], []
    fmt = lambda v: "—" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)
    print(f"\n{'quantity':40} {'PyTorch/Foolbox':>16} {'tulip':>16} {'rel diff':>10}")
    for name, a, b in rows:
        rd = None if a is None or b is None else (
            abs(a - b) / abs(b) if b else 0.0 if a == b else math.inf)
        entry = {"quantity": name, "torch": a, "tulip": b, "rel_diff": rd}
        if name in TOLERANCES and rd is not None:
            kind, tol = TOLERANCES[name]
            entry.update(tolerance=f"{kind} {tol:g}",
                         ok=(abs(a - b) if kind == "abs" else rd) <= tol)
            bad += [] if entry["ok"] else [name]
        table.append(entry)
        print(f"{name:40} {fmt(a):>16} {fmt(b):>16} {fmt(rd):>10}")
    checked = [e["quantity"] for e in table if "ok" in e]
    verdict = (f"DISAGREE on {', '.join(bad)}" if bad else
               f"AGREE: {', '.join(checked)} within tolerance" if checked else
               "NOTHING TO COMPARE: run `tulip eval` and `tulip attack --attack deepfool --norm l2`")
    tols = ", ".join(f"{k} {a} {t:g}" for k, (a, t) in TOLERANCES.items())
    print(f"\nverdict ({tols}): {verdict}")
    if args.json:
        finite = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v
        table = [{k: finite(v) for k, v in e.items()} for e in table]
        with open(args.json, "w") as f:
            json.dump({"run": args.run, "checkpoint": ck, "rows": table, "verdict": verdict},
                      f, indent=2)


if __name__ == "__main__":
    main()
