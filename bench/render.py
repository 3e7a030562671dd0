"""Benchmark table 1: renderer forward + backward time and peak memory against Gaussians, image size, mode, backend.

`python -m bench.render [--quick]` prints a Markdown table. The scene: n Gaussians of voxel-like size filling a
0.2 m cube 0.5 m in front of one camera that sees 0.4 m across, i.e. an opaque animal-like blob over the middle of
the image, as the model produces them. Time: median of the repeats after one warm-up, forward + backward of a sum
loss. Peak memory: on CUDA `torch.cuda.max_memory_allocated`; on CPU the process's resident-set high-water mark
during the call (VmHWM reset through /proc/self/clear_refs, after malloc_trim) minus the resident set before it
(`posesplat.memory.PeakMemory`: tracemalloc does not see torch's allocations). `pairs/px` is the number of
(Gaussian, pixel) pairs that are composited (alpha >= 1/255, before the pixel's T reaches 1e-4) per image pixel:
the scene's depth complexity, which sets the torch backend's cost.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from posesplat.modes import MODES, names
from posesplat.render import Gaussians, project_any, render, torch_backend
from posesplat.memory import PeakMemory

SIZES = ((64, 64), (128, 128), (256, 288))  # (width, height)
COUNTS = (1000, 4000, 16000)
CUBE, VIEW, DISTANCE = 0.2, 0.4, 0.5  # metres


def make_scene(mode: str, n: int, width: int, device: torch.device, seed: int = 0) -> tuple[Gaussians, float]:
    """n Gaussians of `mode` on a jittered grid filling the cube, their scales around the mode's initial scale
    (`scale_unit` voxels, or pixels per voxel in the screen frame), random rotations; returns them and the focal
    length. The fields come from the mode's registry entry, so a new mode is benchmarked without an edit here."""
    m = MODES[mode]
    g = torch.Generator().manual_seed(seed)
    voxel = CUBE / n ** (1 / 3)
    f = width * DISTANCE / VIEW
    unit = m.scale_unit * (f * voxel / DISTANCE if m.frame == "screen" else voxel)
    draw = {"quats": lambda shape: torch.randn(n, *shape, generator=g),
            "scales": lambda shape: unit * (0.6 + 0.8 * torch.rand(n, *shape, generator=g)),
            "offsets": lambda shape: torch.zeros(n, *shape),
            "angles": lambda shape: torch.rand(n, *shape, generator=g) * math.pi}
    kw = dict(means=(torch.rand(n, 3, generator=g) - 0.5) * CUBE, colors=torch.rand(n, 3, generator=g),
              opacities=0.5 + 0.4 * torch.rand(n, generator=g))
    kw.update({k: draw[k](shape) for k, shape in m.fields.items() if k not in kw})
    return Gaussians(**{k: v.to(device).requires_grad_() for k, v in kw.items()}), f


def camera(f: float, width: int, height: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One camera at DISTANCE looking at the cube's centre along +z: viewmats [1, 4, 4], Ks [1, 3, 3]."""
    vm = torch.eye(4, device=device)[None]
    vm[0, 2, 3] = DISTANCE
    K = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]], device=device)
    return vm, K


@torch.no_grad()
def composited_pairs_per_pixel(g: Gaussians, mode: str, vm, K, width: int, height: int) -> float:
    """The scene's depth complexity: pairs the renderer composites, per pixel."""
    kind, radii, means2d, depths, shape = project_any(g, mode, vm, K, width, height)
    packed = torch_backend._pack(means2d, shape, depths, g.opacities, g.colors)
    ids, _ = torch_backend.contributing_pairs(kind, radii, depths, packed, width, height)
    return ids.numel() / (width * height)


def measure(mode: str, n: int, size: tuple[int, int], backend: str, device: torch.device, repeats: int) -> dict:
    """One table row: median forward + backward milliseconds and peak MB over `repeats` after a warm-up."""
    width, height = size
    g, f = make_scene(mode, n, width, device)
    vm, K = camera(f, width, height, device)
    times, peaks = [], []
    for i in range(repeats + 1):
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            out = render(g, mode, vm, K, width, height, backend)
            (out.rgb.sum() + out.alpha.sum()).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        del out
        if i:
            times.append(dt)
            peaks.append(mem.peak_mb)
    return {"mode": mode, "backend": backend, "device": device.type, "gaussians": n, "image": f"{width}x{height}",
            "pairs_per_px": composited_pairs_per_pixel(g, mode, vm, K, width, height),
            "ms": 1000 * statistics.median(times), "peak_mb": max(peaks), "mem_kind": mem.kind}


def run(quick: bool = False) -> list[dict]:
    """Every (device, mode, backend, size, count) case; quick: the two smaller sizes and counts, 3 repeats."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        backends = ("torch", "gsplat") if device.type == "cuda" else ("torch",)
        for mode in names():
            for backend in backends:
                for size in SIZES[:2] if quick else SIZES:
                    for n in COUNTS[:2] if quick else COUNTS:
                        rows.append(measure(mode, n, size, backend, device, 3 if quick else 5))
                        print(table(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def fmt_ms(ms: float) -> str:
    """Whole milliseconds, or two decimals below 10 ms (GPU kernels)."""
    return f"{ms:.0f}" if ms >= 10 else f"{ms:.2f}"


def ratio_table(rows: list[dict]) -> str:
    """torch backend against gsplat on the same GPU, per (mode, Gaussians, image): time and memory ratios.
    Empty when no case was measured with both backends on CUDA."""
    def case(r: dict) -> tuple:
        return r["mode"], r["gaussians"], r["image"]

    cuda = [r for r in rows if r["device"] == "cuda"]
    torch_rows = {case(r): r for r in cuda if r["backend"] == "torch"}
    pairs = [(torch_rows[case(g)], g) for g in cuda if g["backend"] == "gsplat" and case(g) in torch_rows]
    if not pairs:
        return ""
    lines = ["| mode | Gaussians | image | torch ms | gsplat ms | time torch/gsplat | torch MB | gsplat MB | "
             "memory torch/gsplat |", "|---|---|---|---|---|---|---|---|---|"]
    for t, g in pairs:
        lines.append(f"| {g['mode']} | {g['gaussians']} | {g['image']} | {fmt_ms(t['ms'])} | {fmt_ms(g['ms'])} | "
                     f"{t['ms'] / g['ms']:.1f}x | {t['peak_mb']:.0f} | {g['peak_mb']:.0f} | "
                     f"{t['peak_mb'] / max(g['peak_mb'], 1e-9):.1f}x |")
    return "\n".join(lines)


def table(rows: list[dict], header: bool = True) -> str:
    """Markdown table of run()'s rows."""
    lines = ["| mode | backend | device | Gaussians | image | pairs/px | fwd+bwd ms (median) | peak MB | memory measure |",
             "|---|---|---|---|---|---|---|---|---|"] if header else []
    lines += [f"| {r['mode']} | {r['backend']} | {r['device']} | {r['gaussians']} | {r['image']} | "
              f"{r['pairs_per_px']:.1f} | {fmt_ms(r['ms'])} | {r['peak_mb']:.0f} | {r['mem_kind']} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64x64 and 128x128, 1k and 4k Gaussians, 3 repeats")
    rows = run(p.parse_args().quick)
    print("\n" + table(rows) + "\n\n" + ratio_table(rows))
