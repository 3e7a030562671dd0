"""The recording's videos and mask videos: their sizes, lengths and rates checked against each other and the config,
and frames read by index (seeking where the rate is constant), masks thresholded and downsampled."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import imageio_ffmpeg
import numpy as np

from posesplat.prep.config import PrepConfig
from posesplat.prep.errors import PrepError

PASSTHROUGH = ["-fps_mode", "passthrough"]  # every decoded frame once, none duplicated or dropped for a rate


def frame_times(path: Path) -> np.ndarray:
    """Presentation time [N] (seconds) of every frame of a video's first video stream, in decoded order: one full
    decode by the bundled ffmpeg (its showinfo filter), which also counts the frames."""

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(path), "-map", "0:v:0",
           "-vf", "showinfo", *PASSTHROUGH, "-f", "null", "-"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    times = [float(t) for t in re.findall(r"pts_time:\s*([-+0-9.eE]+)", r.stderr)]
    if r.returncode != 0 or not times:
        last = (r.stderr.strip().splitlines() or ["no frames"])[-1]
        raise PrepError(f"{path}: unreadable video (ffmpeg: {last})")
    return np.asarray(times)


def video_info(path: Path) -> tuple[int, int, int, float, Optional[float]]:
    """(frames decoded, width, height, container fps, the rate to seek with or None). A rate to seek with exists
    when every frame's timestamp is the first one plus its index over a constant rate (to a tenth of a frame). A
    time seek then lands on a frame index. Otherwise frames must be decoded from the start."""
    try:
        gen = imageio_ffmpeg.read_frames(str(path), output_params=PASSTHROUGH)
        meta = next(gen)
        gen.close()
    except (RuntimeError, OSError, StopIteration, IndexError) as e:
        raise PrepError(f"{path}: unreadable video ({type(e).__name__}: {e})".splitlines()[0]) from None
    times = frame_times(path)
    seek = None
    if len(times) > 1 and times[-1] > times[0]:
        rate = (len(times) - 1) / (times[-1] - times[0])
        if np.abs(times - times[0] - np.arange(len(times)) / rate).max() <= 0.1 / rate:
            seek = float(rate)
    return len(times), int(meta["size"][0]), int(meta["size"][1]), float(meta.get("fps") or 0), seek


def read_video(path: Path, start: int, count: int, step: int, fps: Optional[float]) -> Iterator[np.ndarray]:
    """Frames start, start+step, ... (count of them, by index in decoded order) as [H, W, 3] uint8. With the
    container's constant fps it seeks to frame `start`; with None it decodes from the first frame."""
    seek = ["-ss", f"{(start - 0.5) / fps:.6f}"] if start > 0 and fps else None  # accurate seek to frame `start`
    skip = 0 if seek or start == 0 else start
    gen = imageio_ffmpeg.read_frames(str(path), input_params=seek, output_params=PASSTHROUGH)
    meta = next(gen)
    w, h = meta["size"]
    try:
        got, last = 0, start - 1
        for n, buf in enumerate(gen):
            if n < skip:
                continue
            last = start + n - skip
            if (last - start) % step == 0:
                yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
                got += 1
                if got == count:
                    return
        raise PrepError(f"{path}: ended after frame {last} while frame {start + (count - 1) * step} was needed")
    finally:
        gen.close()


def binarise(frame: np.ndarray, ds: int, threshold: int) -> np.ndarray:
    """Mask video frame [H, W, 3] -> bool [H/ds, W/ds]: threshold, then box-average >= 0.5."""
    m = frame.mean(-1) >= threshold
    if ds == 1:
        return m
    h, w = m.shape[0] // ds * ds, m.shape[1] // ds * ds
    return m[:h, :w].reshape(h // ds, ds, w // ds, ds).mean((1, 3)) >= 0.5


def check_videos(cfg: PrepConfig, files: dict[str, Path], config: Path, trim: bool,
                 log: Callable[[str], None]) -> tuple[int, int, int, float, dict[str, Optional[float]]]:
    """(source frames, width, height, container fps, per video the fps to seek with or None to decode from the
    start). Sizes agree with each other and the config. Lengths agree (or are trimmed to the shortest). A configured
    fps that disagrees with the containers is reported (frames are read by index, never by time)."""
    infos = {name: video_info(p) for name, p in files.items() if name.startswith(("video", "mask video"))}
    _, W, H, fps, _ = infos["video 0"]
    for name, (_, w, h, _, _) in infos.items():
        if (w, h) != (W, H):
            raise PrepError(f"{files[name]}: {w}x{h} pixels but {files['video 0']} has {W}x{H}")
    for key, value, actual in (("image_width", cfg.image_width, W), ("image_height", cfg.image_height, H)):
        if value is not None and value != actual:
            raise PrepError(f"{config}: key '{key}' is {value} but the videos are {W}x{H} ({files['video 0']})")
    if H < cfg.image_downsample or W < cfg.image_downsample:
        raise PrepError(f"{config}: key 'image_downsample': {cfg.image_downsample} is larger than the {W}x{H} videos")
    counts = {name: info[0] for name, info in infos.items()}
    short, long = min(counts, key=counts.get), max(counts, key=counts.get)
    n_src = counts[short]
    if counts[long] != n_src:
        if not trim:
            raise PrepError(f"{files[short]}: {n_src} frames, the shortest of the videos ({files[long]} has "
                            f"{counts[long]}): run with --trim to use the first {n_src} frames of every video")
        log(f"warning: videos hold {n_src}-{counts[long]} frames; --trim: the first {n_src} of each are used")
    rates = sorted({round(info[3], 3) for info in infos.values()})
    if len(rates) > 1:
        log(f"warning: the videos' containers say {', '.join(map(str, rates))} fps; frames are matched by index")
    if cfg.fps is not None and abs(cfg.fps - fps) > 1e-3 * fps:
        log(f"warning: key 'fps' is {cfg.fps:g} but {files['video 0']} is {fps:g} fps: frames are read by index, so "
            f"this changes nothing; the dataset records the container's {fps:g}")
    varying = [name for name, info in infos.items() if info[4] is None and info[0] > 1]
    if varying:
        log(f"warning: {files[varying[0]]} ({len(varying)} video(s)) has no constant frame rate: frames are decoded "
            f"from the start instead of seeking (slower)")
    seek = {name: info[4] for name, info in infos.items()}
    return n_src, W, H, fps, seek


@dataclass(frozen=True)
class Footage:
    """What the per-frame blocks decode, per camera in order, and how mask frames become masks."""

    videos: tuple[str, ...]
    mask_videos: tuple[str, ...]
    video_fps: tuple[Optional[float], ...]  # per video the rate to seek with, None: decode from the start
    mask_fps: tuple[Optional[float], ...]
    frame_jump: int
    threshold: int  # mask_threshold
    ds: int  # image_downsample

    @classmethod
    def of(cls, cfg: PrepConfig, files: dict[str, Path], seek: dict[str, Optional[float]]) -> Footage:
        """The config's videos and mask videos (resolved `files`) with the rates check_videos found to seek with."""
        views = range(len(cfg.video_fns))
        return cls(tuple(str(files[f"video {c}"]) for c in views), tuple(str(files[f"mask video {c}"]) for c in views),
                   tuple(seek[f"video {c}"] for c in views), tuple(seek[f"mask video {c}"] for c in views),
                   cfg.frame_jump, cfg.mask_threshold, cfg.image_downsample)


def read_masks(footage: Footage, views: list[int], j0: int, j1: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(full-resolution masks [V, H, W], downsampled masks [V, H', W']) of output frames j0..j1."""
    jump = footage.frame_jump
    its = [read_video(Path(footage.mask_videos[c]), j0 * jump, j1 - j0, jump, footage.mask_fps[c]) for c in views]
    for frames in zip(*its):
        full = np.stack([f.mean(-1) >= footage.threshold for f in frames])
        small = np.stack([binarise(f, footage.ds, footage.threshold) for f in frames])
        yield full, small
