"""Benchmark table 1: renderer forward + backward time and peak memory against Gaussians, image size, mode, backend.

`python -m bench.render [--quick]`. Scenes are Gaussians of voxel-like size filling the middle of the image, as the
model produces them. Median of repeats after one warm-up.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from posesplat.render import Gaussians, render
from posesplat.train import PeakMemory

SIZES = ((64, 64), (128, 128), (256, 288))
COUNTS = (1000, 4000, 16000)
MODES = ("3d", "2d", "2d_screen")


def make_scene(mode: str, n: int, width: int, device: torch.device, seed: int = 0):
    """n Gaussians in a 0.2 m cube 0.5 m in front of one camera whose view spans about 0.4 m."""
    g = torch.Generator().manual_seed(seed)
    voxel = 0.2 / n ** (1 / 3)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.2
    kw = dict(means=means, colors=torch.rand(n, 3, generator=g), opacities=0.5 + 0.4 * torch.rand(n, generator=g))
    f = width / 0.8 * 0.5 / 0.25  # 0.4 m across the image at 0.5 m
    if mode == "3d":
        kw.update(quats=torch.randn(n, 4, generator=g), scales=voxel * (0.3 + 0.4 * torch.rand(n, 3, generator=g)))
    elif mode == "2d":
        kw.update(quats=torch.randn(n, 4, generator=g), scales=voxel * (0.4 + 0.4 * torch.rand(n, 2, generator=g)))
    else:
        px = f * voxel / 0.5
        kw.update(offsets=torch.zeros(n, 2), scales=px * (0.4 + 0.4 * torch.rand(n, 2, generator=g)),
                  angles=torch.rand(n, generator=g) * math.pi)
    kw = {k: v.to(device).requires_grad_() for k, v in kw.items()}
    return Gaussians(**kw), f


def measure(mode: str, n: int, size: tuple[int, int], backend: str, device: torch.device, repeats: int) -> dict:
    height, width = size
    g, f = make_scene(mode, n, width, device)
    vm = torch.eye(4, device=device)[None]
    vm[0, 2, 3] = 0.5
    K = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]], device=device)
    times, peaks = [], []
    for i in range(repeats + 1):
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            out = render(g, mode, vm, K, width, height, backend)
            (out.rgb.sum() + out.alpha.sum()).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        if i:
            times.append(dt)
            peaks.append(mem.peak_mb)
    return {"mode": mode, "backend": backend, "device": device.type, "gaussians": n, "image": f"{width}x{height}",
            "ms": 1000 * statistics.median(times), "peak_mb": max(peaks), "mem_kind": mem.kind}


def run(quick: bool = False) -> list[dict]:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        backends = ("torch", "gsplat") if device.type == "cuda" else ("torch",)
        for mode in MODES:
            for backend in backends:
                if backend == "gsplat" and mode == "2d_screen":
                    continue
                for size in SIZES[:2] if quick else SIZES:
                    for n in COUNTS[:2] if quick else COUNTS:
                        rows.append(measure(mode, n, size, backend, device, 3 if quick else 5))
                        print(table(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def table(rows: list[dict], header: bool = True) -> str:
    lines = ["| mode | backend | device | Gaussians | image | fwd+bwd ms (median) | peak MB | memory measure |",
             "|---|---|---|---|---|---|---|---|"] if header else []
    lines += [f"| {r['mode']} | {r['backend']} | {r['device']} | {r['gaussians']} | {r['image']} | {r['ms']:.0f} | "
              f"{r['peak_mb']:.0f} | {r['mem_kind']} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    print(table(run(p.parse_args().quick)))
