#!/usr/bin/env python3
"""PyTorch-on-CPU performance anchor for Lipschitz-regularised / adversarial training.

Re-creates, from scratch, the models and training-step variants of the Tulip
reference code (github.com/AlbertZhangHIT/tulip: models/{allcnn,resnet,blocks}.py,
penalties.py, adversarial_training.py, train.py) and of Finlay & Oberman 2019
(arXiv 1905.11468, github.com/cfinlay/tulip cifar10/train.py), and times them on
synthetic data so that a Rust (Candle) port can be compared side by side on the
same machine.

Models (10 classes):
  allcnn           AllCNN-C, c1=96, c2=192, BatchNorm2d(affine=False), ReLU, 3x32x32
  resnet22         ResNet [3,3,3] BasicBlocks, base 16 channels, batch norm, 3x32x32
  resnext34        ResNet [5,5,5] BranchBlocks (2 branches, mean), base 32, bn, 3x32x32
  resnet22_fashion resnet22 on 1x28x28 (Fashion-MNIST shape)

Training-step modes (batch 128, SGD lr 0.1 momentum 0.9):
  plain   cross-entropy
  lip     CE + 0.1 * max_i ||d CE/d x_i||_2, create_graph=True (double backprop)
  j2      one normalised-L2 gradient-ascent input perturbation (eps 0.01, eval
          mode), then a plain step on the perturbed batch
  lipj2   the paper's best setting: --tanh --decay 5e-4 --lip 0.1 --J2 0.01
          (tanh head BatchNorm1d(affine=False) + t*tanh(x/|t|), Tikhonov decay
          added to the loss, J2 perturbation, Lipschitz penalty)
  pgd     PGD-Linf adversarial training: 10 steps, eps 8/255, step 2/255,
          random start, eval mode with frozen parameters during the attack
  fd      finite-difference gradient-norm penalty (Finlay & Oberman 2019):
          loss + 0.1 * mean_i(((L_i(x_i + h d_i) - L_i(x_i)) / h)^2) / 2, d the
          normalised input gradient, h = 0.01, SGD weight_decay 5e-4, no double
          backprop

Extra per-model measurements:
  infer     eval-mode forward throughput, batch 1000, no grad
  gradpass  one pass over 10,000 images (batch 1000, eval mode) computing the
            summary statistic max_i ||grad_x CE_i||_2

Every case runs in its own subprocess so the reported peak RSS belongs to it.
All data is synthetic (uniform [0,1) images, random labels, fixed seed).
"""

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

MODELS = ["allcnn", "resnet22", "resnext34", "resnet22_fashion"]
TRAIN_MODES = ["plain", "lip", "j2", "lipj2", "pgd", "fd"]
EXTRA_KINDS = ["infer", "gradpass"]
KINDS = TRAIN_MODES + EXTRA_KINDS

MODE_DESCRIPTIONS = {
    "plain": "(a) plain cross-entropy",
    "lip": "(b) CE + 0.1*max||dL/dx||_2, double backprop",
    "j2": "(c) J2=0.01 L2 gradient-ascent perturbation + CE",
    "lipj2": "(d) tanh head + decay 5e-4 + lip 0.1 + J2 0.01",
    "pgd": "(e) PGD-Linf 10 steps, eps 8/255, step 2/255, rand start",
    "fd": "(f) finite-difference grad-norm penalty 0.1, h=0.01",
    "infer": "eval forward, batch 1000",
    "gradpass": "10k images: max ||grad_x CE||_2, batch 1000",
}


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

def build_model_classes():
    """Define the nn.Module classes lazily so that --help works without torch."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Flatten(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    class GlobalAvg(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    class TanhHead(nn.Module):
        """BatchNorm1d(affine=False) followed by t * tanh(x / |t|), t learnable."""

        def __init__(self, classes):
            super().__init__()
            self.bn = nn.BatchNorm1d(classes, affine=False)
            self.t = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            x = self.bn(x)
            t = self.t.abs()
            return t * torch.tanh(x / t)

    def channel_mixer(cin, cout, bn_affine_fill_one):
        """1x1 conv used when a block changes width; softmax-initialised rows."""
        conv = nn.Conv2d(cin, cout, 1, bias=False)
        with torch.no_grad():
            w = F.softmax(conv.weight.view(cout, -1), dim=-1)
            conv.weight.copy_(w.view(cout, cin, 1, 1))
        bn = nn.BatchNorm2d(cout, affine=True)
        if bn_affine_fill_one:
            with torch.no_grad():
                bn.weight.fill_(1.0)
        return nn.Sequential(conv, bn)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.mix = channel_mixer(cin, cout, False) if cin != cout else None
            self.conv0 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn0 = nn.BatchNorm2d(cout)
            self.conv1 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.pool = nn.AvgPool2d(stride) if stride > 1 else None

        def forward(self, x):
            if self.mix is not None:
                x = F.relu(self.mix(x))
            y = F.relu(self.bn0(self.conv0(x)))
            y = self.bn1(self.conv1(y))
            y = F.relu(x + y)
            return self.pool(y) if self.pool is not None else y

    class BranchBlock(nn.Module):
        def __init__(self, cin, cout, stride, branches=2):
            super().__init__()
            self.branches = branches
            self.mix = channel_mixer(cin, cout, True) if cin != cout else None
            self.conv0 = nn.Conv2d(cout, cout * branches, 3, padding=1, bias=False)
            self.bn0 = nn.BatchNorm2d(cout * branches)
            self.conv1 = nn.Conv2d(cout * branches, cout * branches, 3, padding=1,
                                   groups=branches, bias=False)
            self.bn1 = nn.BatchNorm2d(cout * branches)
            self.pool = nn.AvgPool2d(stride) if stride > 1 else None

        def forward(self, x):
            if self.mix is not None:
                x = F.relu(self.mix(x))
            y = F.relu(self.bn0(self.conv0(x)))
            y = self.bn1(self.conv1(y))
            b, c, h, w = y.shape
            # mean over branches: channels are laid out branch-major
            y = y.view(b, self.branches, c // self.branches, h, w).mean(1)
            y = F.relu(x + y)
            return self.pool(y) if self.pool is not None else y

    class ResNet(nn.Module):
        def __init__(self, layers, block, in_channels, classes, base, tanh):
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, base, 3, padding=1, bias=True),
                nn.BatchNorm2d(base, affine=False),
                nn.ReLU())

            def stage(n, cin, cout, stride):
                blocks = [block(cin, cout, stride)]
                blocks += [block(cout, cout, 1) for _ in range(n - 1)]
                return nn.Sequential(*blocks)

            self.layer1 = stage(layers[0], base, base, 1)
            self.layer2 = stage(layers[1], base, 2 * base, 2)
            self.layer3 = stage(layers[2], 2 * base, 4 * base, 2)
            self.pool = GlobalAvg()
            self.fc = nn.Linear(4 * base, classes)
            self.head = TanhHead(classes) if tanh else None

        def forward(self, x):
            x = self.stem(x)
            x = self.layer3(self.layer2(self.layer1(x)))
            x = self.fc(self.pool(x))
            return self.head(x) if self.head is not None else x

    class AllCNN(nn.Module):
        def __init__(self, in_channels, classes, c1, c2, tanh):
            super().__init__()

            def cbr(ci, co, k, s, p):
                return [nn.Conv2d(ci, co, k, stride=s, padding=p, bias=True),
                        nn.BatchNorm2d(co, affine=False), nn.ReLU()]

            self.m = nn.Sequential(
                *cbr(in_channels, c1, 3, 1, 1), *cbr(c1, c1, 3, 1, 1),
                *cbr(c1, c1, 3, 2, 1),
                *cbr(c1, c2, 3, 1, 1), *cbr(c2, c2, 3, 1, 1),
                *cbr(c2, c2, 3, 2, 1),
                *cbr(c2, c2, 3, 1, 1), *cbr(c2, c2, 3, 1, 1),
                *cbr(c2, classes, 1, 1, 0),
                GlobalAvg())
            self.head = TanhHead(classes) if tanh else None

        def forward(self, x):
            x = self.m(x)
            return self.head(x) if self.head is not None else x

    def make(name, tanh=False):
        if name == "allcnn":
            return AllCNN(3, 10, 96, 192, tanh), (3, 32, 32)
        if name == "resnet22":
            return ResNet([3, 3, 3], BasicBlock, 3, 10, 16, tanh), (3, 32, 32)
        if name == "resnet22_fashion":
            return ResNet([3, 3, 3], BasicBlock, 1, 10, 16, tanh), (1, 28, 28)
        if name == "resnext34":
            return ResNet([5, 5, 5], BranchBlock, 3, 10, 32, tanh), (3, 32, 32)
        raise ValueError(name)

    return make


# ---------------------------------------------------------------------------
# Training steps
# ---------------------------------------------------------------------------

def make_train_step(model, mode, args):
    import torch
    import torch.nn.functional as F
    from torch.autograd import grad

    params = list(model.parameters())
    weight_decay = args.fd_decay if mode == "fd" else 0.0
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=weight_decay)

    def freeze():
        model.eval()
        for p in params:
            p.requires_grad_(False)

    def release():
        model.train()
        for p in params:
            p.requires_grad_(True)

    def l2_perturb(x, y, eps):
        """adversarial_training.L2Perturbation: x + eps * grad/||grad||_2."""
        freeze()
        x = x.detach().requires_grad_(True)
        g, = grad(F.cross_entropy(model(x), y), x)
        g = g.flatten(1)
        n = g.norm(dim=1, keepdim=True)
        g = torch.where(n > 0, g / n.clamp_min(1e-30), g)
        release()
        return (x.detach() + eps * g.view_as(x)).detach()

    def pgd_perturb(x, y):
        """adversarial_training.LinfPgdPerturbation with random start."""
        eps, step = args.pgd_eps, args.pgd_step
        xh = x + torch.empty_like(x).uniform_(-eps, eps)
        freeze()
        for _ in range(args.pgd_steps):
            xh = xh.detach().requires_grad_(True)
            g, = grad(F.cross_entropy(model(xh), y), xh)
            xh = xh.detach() + step * g.sign()
            xh = torch.min(torch.max(xh, x - eps), x + eps).clamp(0.0, 1.0)
        release()
        return xh.detach()

    def lip_penalty(loss, x):
        """penalties.LipschitzPenalty('2', create_graph=True), summary = max."""
        g, = grad(loss, x, create_graph=True)
        return g.flatten(1).norm(dim=1).max()

    def tikhonov():
        # penalties.TikhonovPenalty(model, bias=False) as written ends up
        # summing ||p||^2 over every parameter; reproduce that.
        return sum(p.pow(2).sum() for p in params)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        if mode == "plain":
            loss = F.cross_entropy(model(x), y)
        elif mode == "lip":
            x = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(x), y)
            loss = loss + args.lip * lip_penalty(loss, x)
        elif mode == "j2":
            xp = l2_perturb(x, y, args.j2)
            loss = F.cross_entropy(model(xp), y)
        elif mode == "lipj2":
            xp = l2_perturb(x, y, args.j2).requires_grad_(True)
            loss = F.cross_entropy(model(xp), y) + args.decay * tikhonov()
            loss = loss + args.lip * lip_penalty(loss, xp)
        elif mode == "pgd":
            xa = pgd_perturb(x, y)
            loss = F.cross_entropy(model(xa), y)
        elif mode == "fd":
            h = args.fd_h
            x = x.detach().requires_grad_(True)
            lx = F.cross_entropy(model(x), y, reduction="none")
            loss = lx.mean()
            g, = grad(loss, x, retain_graph=True)
            v = g.flatten(1)
            n = v.norm(dim=1, keepdim=True)
            v = torch.where(n > 0, v / n.clamp_min(1e-30), v).view_as(x)
            xf = x.detach() + h * v
            lf = F.cross_entropy(model(xf), y, reduction="none")
            dl = (lf - lx) / h
            loss = loss + args.fd_penalty * dl.pow(2).mean() / 2
        else:
            raise ValueError(mode)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


# ---------------------------------------------------------------------------
# One case (runs inside its own subprocess)
# ---------------------------------------------------------------------------

def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def canary_gflops(reps=20, n=1024):
    """Fixed sgemm workload; a drop against the run's best flags a noisy host."""
    import torch
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return reps * 2 * n ** 3 / (time.perf_counter() - t0) / 1e9


def run_single(model_name, kind, args):
    import torch
    import torch.nn.functional as F
    from torch.autograd import grad

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    make = build_model_classes()
    model, shape = make(model_name, tanh=(kind == "lipj2"))
    n_params = sum(p.numel() for p in model.parameters())
    result = {"model": model_name, "kind": kind, "params": n_params,
              "threads": torch.get_num_threads(), "input": list(shape)}
    canary = [canary_gflops()]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)

    if kind in TRAIN_MODES:
        bsz = args.batch_size
        device = torch.device(args.device)
        model.to(device)
        x = torch.rand(bsz, *shape).to(device)
        y = torch.randint(0, 10, (bsz,)).to(device)
        model.train()
        inner = make_train_step(model, kind, args)

        def step(x, y):
            loss = inner(x, y)
            # A GPU runs asynchronously: wait for the step to finish before timing it.
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return loss

        warm = []
        for _ in range(args.warmup):
            t0 = time.perf_counter()
            loss = step(x, y)
            warm.append(time.perf_counter() - t0)
        if not math.isfinite(loss.item()):
            raise RuntimeError("non-finite loss during warm-up")
        per = warm[-1] if warm else 1.0
        n = int(round(args.target_seconds / max(per, 1e-6)))
        n = max(args.min_steps, min(args.max_steps, n))
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            loss = step(x, y)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        result.update(batch=bsz, warmup_s=warm, steps=n, times_s=times,
                      median_s=med, min_s=min(times),
                      images_per_s=bsz / med, last_loss=loss.item())

    elif kind == "infer":
        bsz = args.eval_batch
        x = torch.rand(bsz, *shape)
        model.eval()
        with torch.inference_mode():
            for _ in range(args.warmup):
                model(x)
            t0 = time.perf_counter()
            model(x)
            per = time.perf_counter() - t0
            n = max(args.min_steps, min(args.max_steps,
                                        int(round(args.target_seconds / per))))
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        result.update(batch=bsz, steps=n, times_s=times, median_s=med,
                      min_s=min(times), images_per_s=bsz / med)

    elif kind == "gradpass":
        bsz = args.eval_batch
        total = args.test_images
        gen = torch.Generator().manual_seed(args.seed + 1)
        xs = torch.rand(total, *shape, generator=gen)
        ys = torch.randint(0, 10, (total,), generator=gen)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def batch_max(xb, yb):
            xb = xb.detach().requires_grad_(True)
            # reduction='sum' -> row i of the gradient is grad_x CE_i exactly.
            # (tulip summary.py uses the batch mean, i.e. this / batch size.)
            g, = grad(F.cross_entropy(model(xb), yb, reduction="sum"), xb)
            return g.flatten(1).norm(dim=1).max().item()

        batch_max(xs[:bsz], ys[:bsz])  # warm-up batch
        t0 = time.perf_counter()
        gmax = 0.0
        for i in range(0, total, bsz):
            gmax = max(gmax, batch_max(xs[i:i + bsz], ys[i:i + bsz]))
        elapsed = time.perf_counter() - t0
        result.update(batch=bsz, images=total, pass_s=elapsed,
                      median_s=elapsed, images_per_s=total / elapsed,
                      max_grad_norm=gmax)
    else:
        raise ValueError(kind)

    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    canary.append(canary_gflops())
    result.update(aten_cpu_capability=torch.backends.cpu.get_cpu_capability())
    result.update(peak_rss_mib=peak_rss_mib(), canary_gflops=canary,
                  user_s=ru1.ru_utime - ru0.ru_utime, sys_s=ru1.ru_stime - ru0.ru_stime,
                  minor_faults=ru1.ru_minflt - ru0.ru_minflt)
    return result


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# glibc malloc settings that keep freed memory inside the process.  On the
# Firecracker VMs this was written on, memory handed back to the kernel is
# reported to the host (virtio-balloon free page reporting) and must be faulted
# in again, which adds large, erratic system time; keeping it makes per-step
# times stable.
# Use the same environment for the Candle side of the comparison.
RETAIN_MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
    "MALLOC_TOP_PAD_": str(1 << 30),
}


CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def busy_cpu_seconds():
    """Machine-wide busy CPU time (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        v = [int(t) for t in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def wait_for_quiet(max_wait, threshold, sample=5.0):
    """Wait until other processes use < threshold of the machine; returns
    (seconds waited, last measured foreign load fraction)."""
    t0 = time.perf_counter()
    while True:
        b0 = busy_cpu_seconds()
        time.sleep(sample)
        frac = (busy_cpu_seconds() - b0) / (sample * NCPU)
        waited = time.perf_counter() - t0
        if frac < threshold or waited > max_wait:
            return waited, frac
        time.sleep(3)


def noise_flags(r, best_canary, tol, foreign_tol):
    flags = []
    if r["foreign_cpu_frac"] > foreign_tol:
        flags.append(f"other processes used {100 * r['foreign_cpu_frac']:.0f}% of the CPUs")
    if min(r["canary_gflops"]) < (1 - tol) * best_canary:
        flags.append(f"canary {min(r['canary_gflops']):.0f}<{best_canary:.0f} GFLOPS")
    t = r.get("times_s")
    if t and len(t) >= 3 and max(t) > 1.5 * min(t):
        flags.append(f"step spread {min(t):.2f}-{max(t):.2f}s")
    return flags


def run_case(args, m, k, env):
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0 = busy_cpu_seconds()
    t0 = time.perf_counter()
    # With sched_autogroup, nice only ranks processes inside one autogroup, and
    # setsid() starts a new one: so the case calls setsid() before it starts
    # and its autogroup is reniced.
    proc = subprocess.Popen(child_argv(args, m, k), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=os.setsid if args.nice else None)
    if args.nice:
        try:
            with open(f"/proc/{proc.pid}/autogroup", "w") as f:
                f.write(str(args.nice))
        except OSError:
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, args.nice)
        except OSError:
            pass
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    foreign = max(0.0, busy_cpu_seconds() - b0 - own) / (wall * NCPU)
    line = next((l for l in stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        err = (stderr.strip().splitlines() or ["unknown"])[-1]
        r = {"model": m, "kind": k, "error": err[:200]}
    else:
        r = json.loads(line[len("RESULT "):])
    r["wall_s"] = wall
    r["foreign_cpu_frac"] = foreign
    return r


def parse_list(s, allowed, what):
    items = [t.strip() for t in s.split(",") if t.strip()]
    for t in items:
        if t not in allowed:
            raise SystemExit(f"unknown {what} {t!r}; choose from {allowed}")
    return items


def child_argv(args, model_name, kind):
    argv = [sys.executable, os.path.abspath(__file__), "--single", f"{model_name}:{kind}"]
    for key in ("threads", "seed", "batch_size", "eval_batch", "test_images", "warmup",
                "target_seconds", "min_steps", "max_steps", "lr", "lip", "j2",
                "decay", "pgd_eps", "pgd_step", "pgd_steps", "fd_h", "fd_penalty",
                "fd_decay", "device"):
        argv += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return argv


CANARY_REF_DEFAULT = 170.0  # quiet-machine sgemm canary on a 2-core AMD EPYC VM (GFLOPS)


def fmt_row(r, ref=CANARY_REF_DEFAULT):
    if "error" in r:
        return (f"| {r['model']} | {r['kind']} | - | - | - | - | - | - | - | - "
                f"| FAILED: {r['error']} |")
    flag = (" noisy: " + "; ".join(r["flags"])) if r.get("flags") else ""
    can = norm = "-"
    if r.get("canary_gflops"):
        c = statistics.mean(r["canary_gflops"])
        can = f"{c:.0f}"
        norm = f"{r['median_s'] * c / ref:.3f}"
    if r["kind"] == "gradpass":
        per10k = r["pass_s"] * 10000 / r["images"]
        if can != "-":
            norm = f"{per10k * c / ref:.1f} s / 10k"
        note = "" if r["images"] == 10000 else f" (extrapolated from {r['images']} img)"
        return (f"| {r['model']} | {r['kind']} | {r['batch']} | {r['images']} img "
                f"| {r['median_s'] / (r['images'] / r['batch']):.3f} s/batch | - "
                f"| {r['images_per_s']:.1f} | {per10k:.1f} s / 10k img{note} "
                f"| {r['peak_rss_mib']:.0f} | {can} | {norm} |{flag}")
    return (f"| {r['model']} | {r['kind']} | {r['batch']} | {r['steps']} "
            f"| {r['median_s']:.3f} | {r['min_s']:.3f} | {r['images_per_s']:.1f} | - "
            f"| {r['peak_rss_mib']:.0f} | {can} | {norm} |{flag}")


def write_markdown(path, data):
    meta, results = data["meta"], data["results"]
    lines = ["# PyTorch CPU anchor: Lipschitz / adversarial training steps", ""]
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Modes:", ""]
    for k in KINDS:
        lines.append(f"- `{k}`: {MODE_DESCRIPTIONS[k]}")
    lines += ["", "| model | mode | batch | timed steps | median s/step | min s/step "
              "| images/s (median) | full pass | peak RSS MiB | canary GFLOPS "
              "| canary-normalised s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {(m, k): i for i, (m, k) in enumerate((m, k) for m in MODELS for k in KINDS)}
    results = sorted(results, key=lambda r: order.get((r["model"], r["kind"]), 1 << 30))
    ref = meta.get("canary reference GFLOPS", CANARY_REF_DEFAULT)
    lines += [fmt_row(r, ref) for r in results]
    lines += ["", f"canary GFLOPS: mean of a 1024x1024 sgemm timed before and after the "
              f"case; canary-normalised s = median s x canary / {ref:.0f} (the quiet-machine "
              "canary), a rough correction for host-level slowdowns that leave no trace "
              "inside the VM."]
    done = {(r["model"], r["kind"]) for r in results if "error" not in r}
    missing = [f"{m}:{k}" for m in MODELS for k in KINDS if (m, k) not in done]
    lines += ["", "Not measured: " + (", ".join(missing) or "none")]
    lines += ["", "Parameter counts: " + ", ".join(
        sorted({f"{r['model']}={r['params']}" for r in results
                if 'params' in r and r['kind'] != 'lipj2'}))]
    grads = [f"{r['model']}={r['max_grad_norm']:.4g}" for r in results
             if r.get("kind") == "gradpass" and "max_grad_norm" in r]
    if grads:
        lines.append("gradpass max ||grad_x CE_i||_2 (random init, synthetic data, seed "
                     f"{meta.get('seed')}): " + ", ".join(grads))
    lines += ["", "Commands:", ""] + [f"    {c}" for c in data.get("commands", [])]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def save(args, data):
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(data, f, indent=1)
    if args.out_md:
        write_markdown(args.out_md, data)


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma list from {MODELS} (default: all)")
    p.add_argument("--modes", default=",".join(KINDS),
                   help=f"comma list from {KINDS} (default: all)")
    p.add_argument("--skip", default="",
                   help="comma list of MODEL:MODE cases to skip, e.g. resnext34:pgd")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu",
                   help="device of the training modes: cpu or cuda[:N] (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128, help="training batch (default 128)")
    p.add_argument("--eval-batch", type=int, default=1000,
                   help="batch for infer / gradpass (default 1000)")
    p.add_argument("--test-images", type=int, default=10000,
                   help="images in the gradpass sweep (default 10000)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    p.add_argument("--target-seconds", type=float, default=20.0,
                   help="timed steps N = round(target / last warm-up step time), "
                        "clamped to [min-steps, max-steps] (default 20)")
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lip", type=float, default=0.1, help="Lipschitz multiplier (default 0.1)")
    p.add_argument("--j2", type=float, default=0.01, help="J2 step size (default 0.01)")
    p.add_argument("--decay", type=float, default=5e-4,
                   help="Tikhonov decay in mode lipj2 (default 5e-4)")
    p.add_argument("--pgd-eps", type=float, default=8 / 255)
    p.add_argument("--pgd-step", type=float, default=2 / 255)
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--fd-h", type=float, default=0.01, help="finite-difference step (default 0.01)")
    p.add_argument("--fd-penalty", type=float, default=0.1,
                   help="finite-difference penalty multiplier (default 0.1)")
    p.add_argument("--fd-decay", type=float, default=5e-4,
                   help="SGD weight_decay in mode fd (default 5e-4, as cfinlay/tulip)")
    p.add_argument("--out-md", default=None, help="write the results table here")
    p.add_argument("--out-json", default=None, help="write raw results (JSON) here")
    p.add_argument("--append", action="store_true",
                   help="merge into the results already in --out-json (same case replaces)")
    p.add_argument("--malloc", choices=["retain", "default"], default="retain",
                   help="glibc malloc env for the cases: 'retain' (default) sets "
                        + " ".join(f"{k}={v}" for k, v in RETAIN_MALLOC_ENV.items())
                        + "; 'default' leaves the environment alone")
    p.add_argument("--retries", type=int, default=3,
                   help="re-run a case flagged as noisy up to this many times; the "
                        "fastest attempt is kept (default 3)")
    p.add_argument("--foreign-tol", type=float, default=0.05,
                   help="flag a case during which other processes used more than this "
                        "fraction of the machine's CPU time (default 0.05)")
    p.add_argument("--quiet-wait", type=float, default=300,
                   help="before each case wait up to this many seconds for other "
                        "processes to go quiet (default 300)")
    p.add_argument("--canary-tol", type=float, default=0.15,
                   help="flag a case whose sgemm canary is this fraction below the "
                        "run's best (default 0.15)")
    p.add_argument("--nice", type=int, default=0,
                   help="run each case after setsid(), in an autogroup of its own "
                        "that gets this nice value, e.g. -10 (root), so that other "
                        "autogroups' jobs disturb it less (default 0)")
    p.add_argument("--canary-ref", type=float, default=0.0,
                   help="quiet-machine sgemm canary in GFLOPS (about 170 on a 2-core "
                        "AMD EPYC VM); cases more than --canary-tol below it are flagged "
                        "(default: the best canary seen in this run)")
    p.add_argument("--single", default=None, metavar="MODEL:MODE",
                   help="internal: run one case in-process and print its JSON")
    p.add_argument("--probe-isa", action="store_true",
                   help="run one small convolution and matrix product and print the "
                        "instruction set ATen reports (run it with ONEDNN_VERBOSE=1 and "
                        "MKL_VERBOSE=1 to see oneDNN's and MKL's choices too)")
    args = p.parse_args()

    if args.probe_isa:
        import torch
        torch.set_num_threads(1)
        x, w = torch.rand(2, 16, 8, 8), torch.rand(16, 16, 3, 3)
        torch.nn.functional.conv2d(x, w, padding=1).sum().item()
        a = torch.rand(64, 64)
        (a @ a).sum().item()
        print("PROBE " + json.dumps({
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}), flush=True)
        return

    if args.single:
        model_name, kind = args.single.split(":")
        print("RESULT " + json.dumps(run_single(model_name, kind, args)), flush=True)
        return

    models = parse_list(args.models, MODELS, "model")
    kinds = parse_list(args.modes, KINDS, "mode")
    skip = set(t.strip() for t in args.skip.split(",") if t.strip())

    import torch
    meta = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "CPU": f"{cpu_model()} ({os.cpu_count()} logical CPUs)",
        "torch threads": args.threads,
        "train batch": args.batch_size,
        "warm-up steps": args.warmup,
        "timing target per case (s)": args.target_seconds,
        "steps clamp": f"[{args.min_steps}, {args.max_steps}]",
        "seed": args.seed,
        "data": "synthetic uniform [0,1) images, random labels",
        "nice": args.nice,
        "malloc": ("retain: " + " ".join(f"{k}={v}" for k, v in RETAIN_MALLOC_ENV.items()))
        if args.malloc == "retain" else "glibc default",
    }
    torch.set_num_threads(args.threads)

    data = {"meta": meta, "commands": [], "results": []}
    if args.append and args.out_json and os.path.exists(args.out_json):
        with open(args.out_json) as f:
            data = json.load(f)
        data["meta"].update(meta)
    data["commands"].append(" ".join([sys.executable] + sys.argv))

    def record(r):
        data["results"] = [q for q in data["results"]
                           if (q["model"], q["kind"]) != (r["model"], r["kind"])]
        data["results"].append(r)

    env = dict(os.environ)
    if args.malloc == "retain":
        env.update(RETAIN_MALLOC_ENV)
    best_canary = max(canary_gflops(), args.canary_ref)
    data["meta"]["canary reference GFLOPS"] = round(best_canary, 1)
    t_all = time.perf_counter()
    for m in models:
        for k in kinds:
            if f"{m}:{k}" in skip:
                continue
            best = None
            for attempt in range(args.retries + 1):
                waited, load = wait_for_quiet(args.quiet_wait, args.foreign_tol)
                if waited > 5:
                    print(f"  waited {waited:.0f} s for a quiet machine (load {load:.0%})",
                          flush=True)
                r = run_case(args, m, k, env)
                if "error" in r:
                    best = r
                    break
                best_canary = max([best_canary] + r["canary_gflops"])
                r["flags"] = noise_flags(r, best_canary, args.canary_tol, args.foreign_tol)
                r["attempt"] = attempt
                # interference only ever adds time: keep the fastest attempt
                r["attempt_medians_s"] = (best or {}).get("attempt_medians_s", []) + [
                    r["median_s"]]
                if best is None or r["median_s"] < best["median_s"]:
                    best = r
                else:
                    best["attempt_medians_s"] = r["attempt_medians_s"]
                if not r["flags"]:
                    break
                print(f"  {m}:{k} attempt {attempt} noisy ({'; '.join(r['flags'])}), "
                      f"median {r['median_s']:.3f} s", flush=True)
            r = best
            record(r)
            print(fmt_row(r) + f"  [case wall {r['wall_s']:.0f} s]", flush=True)
            save(args, data)
    print(f"total wall {time.perf_counter() - t_all:.0f} s", flush=True)
    save(args, data)

if __name__ == "__main__":
    main()
