"""Benchmark table 2: one full training step (carve, U-Nets, head, render, backward) against grid_size, per mode.

`python -m bench.train_step [--quick] [--dataset PATH]` prints a Markdown table. Peak memory is CUDA
max_memory_allocated on a GPU, and on CPU the resident-set high-water mark of the step (see docs/training.md).
The study's GPU-fraction memory model is fitted to these rows (study/runner/resources.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from posesplat.config import make_config
from posesplat.losses import loss_terms
from posesplat.memory import PeakMemory
from posesplat.modes import names
from posesplat.render import render
from posesplat.run_setup import build_model, load_frame, prepare

from bench.render import fmt_ms

GRIDS = (32, 48, 64, 112)
TARGET_MB = 4096  # 3d at grid 112 must fit in 4 GiB of GPU memory (the hand-run attempt ran out of 11.75 GiB at 64)


def step_once(cfg, setup, model, opt, frame) -> tuple[float, int]:
    """One optimisation step on one frame; returns (seconds, number of Gaussians)."""
    t0 = time.perf_counter()
    b = load_frame(setup, frame, setup.observed, cfg.image_downsample)
    g = model(b["images"], b["masks"], b["viewmats"], b["Ks"], b["centre"], b["heading"])
    out = render(g, cfg.gaussian_mode, b["viewmats"][:1], b["Ks"][:1], setup.width, setup.height, setup.backend,
                 setup.background)
    terms = loss_terms(out, b["images"][:1], b["masks"][:1], 0.0)
    loss = terms["iou_loss"] + 0.5 * terms["l1"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, int(g.means.shape[0])


def measure(dataset: str, mode: str, grid: int, repeats: int, downsample: int, device: str) -> dict:
    """Median step time and peak memory for one (mode, grid_size)."""
    cfg = make_config(dict(dataset=dataset, gaussian_mode=mode, grid_size=grid, image_downsample=downsample,
                           max_n=200_000, min_n=100, device=device, max_frames=30))
    setup = prepare(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, setup)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    frames = setup.frames["train"]
    step_once(cfg, setup, model, opt, frames[0])  # warm-up
    times, peaks, n = [], [], 0
    for i in range(repeats):
        with PeakMemory(setup.device) as mem:
            dt, n = step_once(cfg, setup, model, opt, frames[(i + 1) % len(frames)])
        times.append(dt)
        peaks.append(mem.peak_mb)
    crop = [b - a for a, b in setup.volume_idx]
    return {"mode": mode, "grid_size": grid, "voxels": crop[0] * crop[1] * crop[2], "gaussians": n,
            "step_ms": 1000 * statistics.median(times), "peak_mb": max(peaks), "mem_kind": mem.kind,
            "device": str(setup.device), "backend": setup.backend, "image": f"{setup.width}x{setup.height}",
            "pixels": setup.width * setup.height}


def run(dataset: str, quick: bool = False, device: str = "auto") -> list[dict]:
    """Every (image downsample, grid, mode); two image sizes so the memory model can separate voxels from pixels."""
    grids, downsamples = ((32, 48), (2,)) if quick else (GRIDS, (2, 1))
    rows = []
    for downsample in downsamples:
        for grid in grids:
            for mode in names():
                rows.append(measure(dataset, mode, grid, 2 if quick else 5, downsample, device))
                print(table(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def table(rows: list[dict], header: bool = True) -> str:
    """Markdown table of run()'s rows."""
    lines = ["| mode | grid | voxels (crop) | Gaussians | image | step ms (median) | peak MB | memory measure | device |",
             "|---|---|---|---|---|---|---|---|---|"] if header else []
    for r in rows:
        lines.append(f"| {r['mode']} | {r['grid_size']} | {r['voxels']} | {r['gaussians']} | {r['image']} | "
                     f"{fmt_ms(r['step_ms'])} | {r['peak_mb']:.0f} | {r['mem_kind']} | {r['device']}/{r['backend']} |")
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    """How peak memory grows from the smallest to the largest grid, against the voxels, per (mode, image)."""
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for image in dict.fromkeys(r["image"] for r in rows):
            rs = sorted((r for r in rows if r["mode"] == mode and r["image"] == image), key=lambda r: r["grid_size"])
            if len(rs) < 2:
                continue
            lo, hi = rs[0], rs[-1]
            lines.append(f"- {mode} at {image}: grid {lo['grid_size']} -> {hi['grid_size']} is "
                         f"{hi['voxels'] / lo['voxels']:.1f}x the voxels and {hi['peak_mb'] / lo['peak_mb']:.1f}x the "
                         f"peak memory ({lo['peak_mb']:.0f} -> {hi['peak_mb']:.0f} MB, {lo['mem_kind']})")
    return "\n".join(lines)


def target(rows: list[dict]) -> str:
    """The 4 GiB target for 3d at grid 112, judged only on GPU rows; says so when none was measured."""
    rs = [r for r in rows if r["mode"] == "3d" and r["grid_size"] == 112]
    gpu = [r for r in rs if r["device"].startswith("cuda")]
    if not gpu:
        cpu = ", ".join(f"{r['peak_mb']:.0f} MB at {r['image']}" for r in rs) or "not run"
        return (f"Target (3d at grid 112 within {TARGET_MB} MB of GPU memory): not measured, no GPU here "
                f"(CPU resident-set peak with the torch renderer: {cpu}).")
    worst = max(gpu, key=lambda r: r["peak_mb"])
    verdict = "met" if worst["peak_mb"] <= TARGET_MB else "NOT met"
    return (f"Target (3d at grid 112 within {TARGET_MB} MB of GPU memory): {verdict}: "
            + ", ".join(f"{r['peak_mb']:.0f} MB at {r['image']} ({r['backend']})" for r in gpu) + ".")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="data/synthetic_mouse.zarr")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    rows = run(a.dataset, a.quick, a.device)
    print("\n".join([table(rows), "", growth(rows), "", target(rows)]))
