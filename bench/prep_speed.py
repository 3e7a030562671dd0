"""Import throughput: `python -m bench.prep_speed [--old DIR] [--frames 500,2000] [--sizes 128,512] [--write]`.

Frames per second of each step of `python -m posesplat.prep` (track, frames) and of the whole import, against the
recording's length and image size, with the time to decode every video once as the floor. Recordings come from
`posesplat.synth --raw` (6 cameras, 128x128); a larger size is the same recording scaled up by FFmpeg (nearest
neighbour, lossless H.264) with its intrinsics scaled to match. With `--old DIR` (a worktree of an earlier commit)
the same imports run on that code too, old and new alternating in one run, and their datasets are compared array by
array and attribute by attribute: table 9 of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import av
import h5py
import imageio_ffmpeg
import numpy as np
import zarr

from bench.reference import write_doc

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "prep_speed"  # the recordings, kept for reruns (data/ is not committed)
STEPS = ("track", "frames")  # the steps that print `<step>: started` and `<step>: done in` when piped


SYNTH_MAX = 2000  # longer recordings repeat the 2000-frame one (FFmpeg's concat, packets copied)


def base_recording(frames: int, data: Path) -> Path:
    """The 128x128 synthetic recording of `frames` frames (made once, kept in `data`); its prep config. Longer than
    SYNTH_MAX (a multiple of it): that recording's videos played several times over, joined without re-encoding."""
    from posesplat.synth import make_raw  # deferred: torch, for the generator only

    out = data / f"rec-{frames}-128"
    if (out / "prep.json").exists():
        return out / "prep.json"
    if frames <= SYNTH_MAX:
        print(f"making {out} ({frames} frames)", file=sys.stderr, flush=True)
        make_raw(out, frames=frames, progress=False)
        return out / "prep.json"
    if frames % SYNTH_MAX:
        raise SystemExit(f"error: --frames {frames}: above {SYNTH_MAX} a multiple of it")
    base = base_recording(SYNTH_MAX, data)
    print(f"making {out} ({frames // SYNTH_MAX} x {base.parent.name})", file=sys.stderr, flush=True)
    return derived(base, out, lambda src, dst: repeat_video(src, dst, frames // SYNTH_MAX), lambda K: K)


def repeat_video(src: Path, dst: Path, times: int) -> None:
    """A video played `times` times over, joined by FFmpeg's concat demuxer with the packets copied."""
    listing = dst.with_suffix(".txt")
    listing.write_text("".join(f"file '{src.resolve()}'\n" for _ in range(times)))
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
           "-i", str(listing), "-c", "copy", str(dst)]
    subprocess.run(cmd, check=True)
    listing.unlink()


def derived(base: Path, out: Path, video: Callable[[Path, Path], None], intrinsics: Callable) -> Path:
    """A recording made from `base` (its prep config) into `out`: each video through video(src, dst), the camera
    file's intrinsics [C, 3, 3] through intrinsics(K); its prep config."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    cfg = json.loads(base.read_text())
    for name in [*cfg["video_fns"], *cfg["mask_video_fns"]]:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        video(base.parent / name, tmp / name)
    shutil.copy(base.parent / cfg["camera_fn"], tmp / cfg["camera_fn"])
    with h5py.File(tmp / cfg["camera_fn"], "r+") as h:
        h["camera_parameters/intrinsic"][...] = intrinsics(h["camera_parameters/intrinsic"][()])
    cfg.update(data_directory=str(out.resolve()), project_directory=str(out.resolve()))
    (tmp / "prep.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.rename(out)
    return out / "prep.json"


def scale_video(src: Path, dst: Path, side: int) -> None:
    """A video scaled to side x side by FFmpeg: nearest neighbour, every frame kept, lossless H.264."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-vf",
           f"scale={side}:{side}:flags=neighbor", "-fps_mode", "passthrough", "-c:v", "libx264", "-qp", "0",
           "-pix_fmt", "yuv420p", str(dst)]
    subprocess.run(cmd, check=True)


def recording(frames: int, side: int, data: Path) -> Path:
    """The recording of `frames` frames at side x side (the 128x128 one scaled up); its prep config."""
    base = base_recording(frames, data)
    out = data / f"rec-{frames}-{side}"
    if side == 128 or (out / "prep.json").exists():
        return out / "prep.json"
    print(f"making {out} (scaling the 128x128 videos)", file=sys.stderr, flush=True)
    return derived(base, out, lambda src, dst: scale_video(src, dst, side), lambda K: scaled_intrinsics(K, side / 128))


def scaled_intrinsics(K: np.ndarray, s: float) -> np.ndarray:
    """Intrinsics [C, 3, 3] of images scaled by s, in OpenCV pixels (u' = s (u + 0.5) - 0.5)."""
    K = K.copy()
    K[:, :2, :2] *= s
    K[:, :2, 2] = s * (K[:, :2, 2] + 0.5) - 0.5
    return K


def decode_floor(config: Path) -> float:
    """Seconds to decode every video and mask video of a recording once into RGB arrays (PyAV, one process)."""
    cfg = json.loads(config.read_text())
    t0 = time.perf_counter()
    for name in [*cfg["video_fns"], *cfg["mask_video_fns"]]:
        with av.open(str(Path(cfg["data_directory"]) / name)) as c:
            for frame in c.decode(c.streams.video[0]):
                frame.to_ndarray(format="rgb24")
    return time.perf_counter() - t0


def import_once(tree: Path, config: Path, out: Path, workers: int) -> dict[str, float]:
    """`python -m posesplat.prep` of `tree`'s code into `out`, stderr piped: seconds per part, from the times its
    progress lines arrive (`check` is everything before tracking, `pose` between the steps, `finish` after)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "posesplat.prep", str(config), "--out", str(out), "--workers", str(workers)]
    t0 = time.perf_counter()
    marks, lines = {}, []
    with subprocess.Popen(cmd, cwd=tree, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as p:
        for line in p.stderr:
            lines.append(line.rstrip())
            for step in STEPS:
                for what in ("started", "done in"):
                    if line.startswith(f"{step}: {what}"):
                        marks[f"{step} {what}"] = time.perf_counter() - t0
    total = time.perf_counter() - t0
    if p.returncode or len(marks) != 4:
        raise RuntimeError(f"prep on {tree} failed ({p.returncode}): {lines[-3:]}")
    return {"check": marks["track started"], "track": marks["track done in"] - marks["track started"],
            "pose": marks["frames started"] - marks["track done in"],
            "frames": marks["frames done in"] - marks["frames started"], "finish": total - marks["frames done in"],
            "total": total}


def same_dataset(a: Path, b: Path) -> str:
    """'yes' when two datasets hold the same arrays (every value) and attributes, else what differs first."""
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    if sorted(ga.array_keys()) != sorted(gb.array_keys()):
        return f"arrays {sorted(ga.array_keys())} vs {sorted(gb.array_keys())}"
    for k in sorted(ga.array_keys()):
        if not np.array_equal(ga[k][:], gb[k][:]):
            return f"array {k}"
    differ = sorted(k for k in set(ga.attrs) | set(gb.attrs) if ga.attrs.get(k) != gb.attrs.get(k))
    return f"attrs {', '.join(differ)}" if differ else "yes"


def measure(trees: dict[str, Path], configs: dict[tuple[int, int], Path], rounds: int, workers: int,
            old_frames: int) -> tuple[dict, dict, dict]:
    """Per (size, frames): each code's parts per round (the codes alternating; the old code only up to old_frames),
    the decode floors, and whether the codes' datasets are identical."""
    got, floors, same = defaultdict(list), defaultdict(list), {}
    with tempfile.TemporaryDirectory(prefix="prep-speed-") as tmp:
        for key, config in configs.items():
            for r in range(rounds):
                floors[key].append(decode_floor(config))
                outs = {}
                for code, tree in trees.items():
                    if code == "old" and key[1] > old_frames:
                        continue
                    print(f"round {r + 1}/{rounds}: {key[1]} frames at {key[0]}x{key[0]} on {code} code",
                          file=sys.stderr, flush=True)
                    outs[code] = Path(tmp) / f"{code}.zarr"
                    got[(code, *key)].append(import_once(tree, config, outs[code], workers))
                if len(outs) > 1:
                    same[key] = same_dataset(*outs.values())
                for out in outs.values():
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.rmtree(out.with_name(out.name + ".prep"), ignore_errors=True)
    return got, floors, same


def table(got: dict, floors: dict, same: dict, codes: list[str], views: int = 6) -> str:
    """The markdown table: per recording and code, median seconds and frames per second of each part."""
    head = ["size", "frames", "code", "check s", "track fps", "frames fps", "pose + finish s", "import s",
            "import fps", "decode floor s", "import / floor", "same dataset"]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    keys = sorted({k[1:] for k in got})
    for side, frames in keys:
        floor = statistics.median(floors[(side, frames)])
        for code in [c for c in codes if (c, side, frames) in got]:
            m = {p: statistics.median(r[p] for r in got[(code, side, frames)]) for p in got[(code, side, frames)][0]}
            rows.append(f"| {side}x{side} | {frames} | {code} | {m['check']:.1f} | {frames / m['track']:.0f} | "
                        f"{frames / m['frames']:.0f} | {m['pose'] + m['finish']:.1f} | {m['total']:.1f} | "
                        f"{frames / m['total']:.1f} | {floor:.1f} | {m['total'] / floor:.1f}x | "
                        f"{same.get((side, frames), '') if code == codes[-1] else ''} |")
    lines = ["\n".join(rows), ""]
    if len(codes) > 1:
        for side, frames in [k for k in keys if all((c, *k) in got for c in codes)]:
            t = {c: statistics.median(r["total"] for r in got[(c, side, frames)]) for c in codes}
            lines.append(f"- {frames} frames at {side}x{side}, {views} cameras: {codes[-1]} imports "
                         f"{t[codes[0]] / t[codes[-1]]:.1f}x faster than {codes[0]} ({t[codes[0]]:.1f} s -> "
                         f"{t[codes[-1]]:.1f} s).")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prep_speed", description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, help="a worktree of the code to compare with (git worktree add DIR COMMIT)")
    p.add_argument("--frames", default="500,2000", help="recording lengths at 128x128 (above 2000: a multiple of it)")
    p.add_argument("--sizes", default="128,512", help="image sides (512: the 128 recording scaled up)")
    p.add_argument("--big-frames", type=int, default=500, help="frames of the recordings larger than 128x128")
    p.add_argument("--old-frames", type=int, default=2000, help="the old code imports recordings up to this long")
    p.add_argument("--rounds", type=int, default=1, help="imports per (recording, code), the codes alternating")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", type=Path, default=DATA, help="where the recordings are made and kept")
    p.add_argument("--write", action="store_true", help="put the table into docs/benchmarks.md (table 9)")
    a = p.parse_args(argv)
    if a.old is not None and not (a.old / "posesplat" / "prep").is_dir():
        print(f"error: --old {a.old}: not a checkout of this project (no posesplat/prep/)", file=sys.stderr)
        return 2
    a.data.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in a.sizes.split(",")]
    lengths = [int(f) for f in a.frames.split(",")]
    configs = {(s, f): recording(f, s, a.data) for s in sizes for f in (lengths if s == 128 else [a.big_frames])}
    trees = {"new": ROOT} if a.old is None else {"old": a.old.resolve(), "new": ROOT}
    got, floors, same = measure(trees, configs, a.rounds, a.workers, a.old_frames)
    text = table(got, floors, same, list(trees))
    print(text)
    if a.write:
        cmd = (f"python -m bench.prep_speed{f' --old {a.old}' if a.old else ''} --frames {a.frames} --sizes {a.sizes} "
               f"--big-frames {a.big_frames} --old-frames {a.old_frames} --rounds {a.rounds} --workers {a.workers} "
               f"--write")
        write_doc(text, f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} with `{cmd}`. " + NOTE,
                  title=TITLE)
    return 0


TITLE = "## 9. Import throughput (`python -m posesplat.prep`)"
NOTE = (
    "Synthetic recordings of 6 cameras (`posesplat.synth --raw`, 128x128; 512x512 is the same recording scaled up by "
    "FFmpeg, nearest neighbour, lossless H.264, intrinsics scaled), imported with `--workers 2` from a fresh output "
    "each time. Parts from the times the piped progress lines arrive: check (config, videos counted and timed, "
    "cameras), track and frames (the two parallel steps, in output frames per second), pose + finish, and the whole "
    "import (`import s`, including Python's start-up). The decode floor decodes every video and mask video once into "
    "RGB arrays in one process (PyAV). Medians over rounds; old and new alternate on each recording. `same dataset`: "
    "the two codes' datasets hold equal arrays (every value) and attributes.")


if __name__ == "__main__":
    sys.exit(main())
