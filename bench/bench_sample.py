"""Sampling speed: samples/s and network evaluations (NFE) per sample of each formalism on CPU, and the
report's measurement (64 x 8 s, EDM on EnCodec latents: 12.7 s on its GPU) estimated at full size.

    python bench/bench_sample.py             # a few minutes on a 2-core laptop
    python bench/bench_sample.py --batch 16  # samples per sampler call (default 8)
    python bench/bench_sample.py --threads 2 # torch threads (default 1)
    python bench/bench_sample.py --discdpm   # only section 3: DiscDPM's step, reference against fast

One torch thread by default: on a machine whose cores other processes also use, a 2-thread team
stalls whenever one of its threads is descheduled (measured here on 2 shared cores: 0.03 s per
tiny EDM call on one thread, 0.25-0.6 s on two), so one thread gives numbers that mean something.

No dataset or checkpoint is needed: sampling cost does not depend on the weights, so each model is
the config's U-Net freshly initialised, with the controls of the tiny configs (velocity, chroma and a
3-class instrument one-hot: 5 channels, set to real-looking values), sampled through the same
`pvtbuild.train.sample.generate` that `pvtbuild sample` and `evaluate` use (it counts the net's calls).

1. The tiny configs (`pipelines/train/*-tiny.yaml`) at their formalism's default steps: EDM (18 Heun
   steps: 35 NFE), DDPM (100 respaced steps), IADB (the edm-encodec-tiny U-Net with `formalism: iadb`,
   128 steps, as the swiss-roll config), DiscDPM and EDM on the CQT. DiscDPM (default 100 exact skip
   steps) is measured at `DISC_STEPS` and its time at its default is extrapolated (cost is linear in
   the steps: one net call each), said so in the table. DiscDPM and the CQT run
   `SMALL_BATCH` samples per call (seconds per call on a CPU; samples/s hardly depends on the batch
   there). Two 3-step calls warm each model up first (a model's first calls cost up to 20x the
   later ones on CPU); the encodec rows are the median of 3 runs.
   Guidance scale 1 (one net pass per step); a scale != 1 doubles the batch of every call.
2. The report's number: the full-size `edm-encodec` U-Net (Table 4.1/4.2 size, 227.7 M parameters)
   is built on the CPU and one denoiser call is timed at batch 1 and batch 2 (after a warm-up call,
   median of `FULL_REPEATS`); 64 clips x 35 NFE are then estimated from the per-example cost at
   batch 2 (CPU batching gains little beyond it). That is a CPU estimate: set it against the
   report's 12.7 s on one GPU for the ratio, not as a like-for-like comparison.
3. DiscDPM's sampling step, the reference (`tests/discdpm_reference.py`: the math before issue 19, a
   posterior over all 1024 classes at every position in log space and a Gumbel-max draw) against
   the fast form (`DiscDPM.posterior` + its draw: one logsumexp and one gather per position, a
   categorical draw only where the mixture draws from the net's distribution), both in this run, on
   the discdpm-disc-tiny U-Net's logits at `SMALL_BATCH` x [16, 600] codes. Three steps of the
   100-step schedule (its first, middle and last jump); per step the median of `STEP_REPEATS` runs of
   the net call, the reference's and the fast posterior-and-draw. Target: a whole step (net call
   included) >= 4x faster. Before, ~95 % of a step was the posterior (cProfile), so its cost
   barely shrank with the model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pvtbuild.train.backbone import count_parameters
from pvtbuild.train.build import build_backbone, build_formalism
from pvtbuild.train.config import load_train_config, train_config_from_dict
from pvtbuild.train.guidance import Controls
from pvtbuild.train.sample import Sampler, generate
from pvtbuild.train.spec import DataSpec, DataStats

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "pipelines" / "train"
DISC_STEPS = 10
SMALL_BATCH = 2  # DiscDPM and the 2-D CQT U-Net cost seconds per call on CPU: fewer samples per call
FULL_REPEATS = 3
REPORT_SECONDS, REPORT_CLIPS = 12.7, 64
SHAPES = {"encodec": (128, 600), "disc": (16, 600), "cqt": (2, 216, 1921)}
GROUPS = (1, 1, 3)  # velocity, chroma, instrument
STEP_REPEATS = 3
STEP_TARGET = 4.0


def _config(name: str, formalism: dict | None = None):
    if formalism is None:
        return load_train_config(CONFIGS / f"{name}.yaml")
    data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    data["name"], data["formalism"] = f"{name} as {formalism['name']}", formalism
    return train_config_from_dict(data)


def _sampler(cfg) -> Sampler:
    fmt = cfg.data.format
    spec = DataSpec(SHAPES[fmt], 1024 if fmt == "disc" else 0, sum(GROUPS), 0)
    torch.manual_seed(0)
    net = build_backbone(cfg, spec).eval()
    return Sampler(cfg, net, build_formalism(cfg, spec, DataStats()), spec, DataStats(), 0, Path("-"))


def melody_controls(frames: int) -> Controls:
    """One clip's controls: a melody of 8 notes (velocity, chroma) played on the violin."""
    t = np.arange(frames)
    note = t * 8 // frames
    local = np.stack([0.4 + 0.05 * (note % 4), (note * 5 % 12) / 11, 0 * t, 0 * t + 1, 0 * t]).astype(np.float32)
    return Controls(torch.from_numpy(local)[None], None, GROUPS, ())


def bench_tiny(batch: int) -> None:
    print(f"1. tiny configs on CPU ({torch.get_num_threads()} torch threads), guidance scale 1")
    print(f"   {'config':<34} {'formalism':<9} {'batch':>5} {'steps':>5} {'NFE':>5} {'samples/s':>10} "
          f"{'s per call':>11}")
    cases = [("edm-encodec-tiny", None, None, batch, 3), ("ddpm-encodec-tiny", None, None, batch, 3),
             ("edm-encodec-tiny", {"name": "iadb", "sample_steps": 128}, None, batch, 3),
             ("discdpm-disc-tiny", None, DISC_STEPS, SMALL_BATCH, 1), ("edm-cqt-tiny", None, None, SMALL_BATCH, 1)]
    for name, formalism, steps, batch, repeats in cases:
        cfg = _config(name, formalism)
        sampler = _sampler(cfg)
        controls = melody_controls(sampler.spec.shape[-1])
        for _ in range(2):  # warm-up: the first calls of a model pay far more than the rest (allocator, kernels)
            generate(sampler, controls, batch, 3, 1.0, 0, batch)
        runs = [generate(sampler, controls, batch, steps, 1.0, 0, batch) for _ in range(repeats)]
        gen = sorted(runs, key=lambda g: g.seconds)[len(runs) // 2]  # the median run
        label = cfg.name
        note = ""
        if steps is not None:  # DiscDPM: measured at DISC_STEPS, its default extrapolated
            full = sampler.formalism.cfg.sample_steps or sampler.formalism.T
            note = (f"   -> at its default {full} steps: {gen.samples_per_s * gen.nfe / full:.3g} samples/s "
                    "(extrapolated)")
        print(f"   {label:<34} {cfg.formalism_name:<9} {batch:>5} {steps or '-':>5} {gen.nfe:>5g} "
              f"{gen.samples_per_s:>10.3g} {gen.seconds:>11.2f}{note}")


def bench_full() -> None:
    cfg = load_train_config(CONFIGS / "edm-encodec.yaml")
    sampler = _sampler(cfg)
    params = count_parameters(sampler.net)
    nfe = 2 * sampler.formalism.cfg.sample_steps - 1
    print(f"2. full-size edm-encodec ({params / 1e6:.1f} M parameters) on CPU: one denoiser call")
    per_example = {}
    with torch.no_grad():
        for b in (1, 2):
            c = melody_controls(600)
            c = Controls(c.local.expand(b, -1, -1).contiguous(), None, GROUPS, ())
            x = torch.randn(b, *SHAPES["encodec"])
            sigma = torch.full((b,), 1.0)
            sampler.formalism.denoise(sampler.net, x, sigma, c)  # warm-up
            times = []
            for _ in range(FULL_REPEATS):
                t0 = time.perf_counter()
                sampler.formalism.denoise(sampler.net, x, sigma, c)
                times.append(time.perf_counter() - t0)
            per_example[b] = statistics.median(times) / b
            print(f"   batch {b}: {statistics.median(times):.2f} s per call, {per_example[b]:.2f} s per example")
    estimate = REPORT_CLIPS * nfe * per_example[2]
    print(f"   the report's measurement, {REPORT_CLIPS} x 8 s at {nfe} NFE (18 Heun steps): about {estimate:.0f} s "
          f"on this CPU, {estimate / REPORT_SECONDS:.0f}x the report's {REPORT_SECONDS} s on its GPU")


def bench_discdpm_step() -> None:
    """Section 3 of the module docstring: the reference DiscDPM step against the fast one, same logits."""
    sys.path.insert(0, str(REPO / "tests"))  # the reference lives beside the tests that check against it
    from discdpm_reference import ReferenceDiscDPM  # noqa: PLC0415  (importable once tests/ is on sys.path, above)

    sampler = _sampler(_config("discdpm-disc-tiny"))
    d, b = sampler.formalism, SMALL_BATCH
    ref = ReferenceDiscDPM(d)
    c = melody_controls(SHAPES["disc"][1])
    controls = Controls(c.local.expand(b, -1, -1).contiguous(), None, GROUPS, ())
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(d.K, (b, *SHAPES["disc"]), generator=gen)
    ts = list(reversed(d.timesteps_for(d.cfg.sample_steps).tolist())) + [0]
    print(f"3. DiscDPM sampling step, reference against fast, discdpm-disc-tiny U-Net, batch {b} x "
          f"{list(SHAPES['disc'])} codes, K = {d.K} (ms, median of {STEP_REPEATS})")
    print(f"   {'jump t -> s':>12} {'net':>7} {'reference draw':>15} {'fast draw':>10} {'draw x':>7} "
          f"{'whole step x':>13}")
    totals = [0.0, 0.0, 0.0]
    with torch.no_grad():
        for i in (0, len(ts) // 2, len(ts) - 2):
            t, s = torch.full((b,), ts[i]), torch.full((b,), ts[i + 1])
            level = d.noise_level(t)
            net_s = _median_time(lambda: sampler.net(x, level, controls))
            logits = sampler.net(x, level, controls)
            slow = _median_time(lambda: ref.step(x, logits, t, s, gen))
            fast = _median_time(lambda: d.draw(x, logits, *d.posterior(x, logits, t, s), gen))
            for j, v in enumerate((net_s, slow, fast)):
                totals[j] += v
            print(f"   {f'{ts[i]} -> {ts[i + 1]}':>12} {1e3 * net_s:7.0f} {1e3 * slow:15.0f} {1e3 * fast:10.0f} "
                  f"{slow / fast:7.1f} {(net_s + slow) / (net_s + fast):13.1f}")
    net_s, slow, fast = totals
    ratio = (net_s + slow) / (net_s + fast)
    print(f"   the three steps: posterior and draw x{slow / fast:.1f} faster; a whole step x{ratio:.1f} faster "
          f"(target >= {STEP_TARGET:g}: {'met' if ratio >= STEP_TARGET else 'NOT MET'}); with the default steps "
          f"down from {d.T} to {d.cfg.sample_steps}, a sample costs about x{ratio * d.T / d.cfg.sample_steps:.0f} less")


def _median_time(fn) -> float:
    fn()  # warm-up
    times = []
    for _ in range(STEP_REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--discdpm", action="store_true", help="only section 3, DiscDPM's step against the reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_sample: CPU, load average {load:.1f} over {os.cpu_count()} cores (a busy machine slows every row)")
    if not args.discdpm:
        bench_tiny(args.batch)
        bench_full()
    bench_discdpm_step()


if __name__ == "__main__":
    main()
