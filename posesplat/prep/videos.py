"""The recording's videos and mask videos: their sizes, lengths and rates checked against each other and the config,
and frames read by index, decoded in-process with PyAV (FFmpeg's libraries): one open reader per video per process,
which decodes on from where it stands or seeks by timestamp where the rate is constant."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional

import av
import numpy as np

from posesplat.prep.config import PrepConfig
from posesplat.prep.errors import PrepError

FORWARD = 300  # a reader decodes on, rather than seeks, to a frame at most this many frames ahead (a keyframe gap)


def unreadable(path: Path | str, e: Exception) -> PrepError:
    """The one-line refusal of a video FFmpeg cannot read."""
    return PrepError(f"{path}: unreadable video ({type(e).__name__}: {e})".splitlines()[0])


def open_video(path: Path | str) -> tuple[av.container.InputContainer, av.VideoStream]:
    """The container and its first video stream; refuses a file FFmpeg cannot open or that holds no video."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise unreadable(path, e) from None
    if not container.streams.video:
        container.close()
        raise PrepError(f"{path}: unreadable video (no video stream)")
    return container, container.streams.video[0]


def printed_time(t: float) -> float:
    """A timestamp (seconds) rounded as FFmpeg prints it (six decimals, more below a second): the seek rates of
    earlier imports came from these printed times and are part of their fingerprints."""
    if t == 0:
        return 0.0
    lg = int(np.floor(np.log10(abs(t))))
    return float(f"{t:.{-lg + 5 if lg < 0 else 6}f}")


def packet_times(path: Path | str) -> np.ndarray:
    """Presentation time [N] (seconds, ascending, as FFmpeg prints them) of every frame of a video's first video
    stream, from its packets' timestamps without decoding; a stream whose packets carry none is decoded instead."""
    container, stream = open_video(path)
    tb = stream.time_base or Fraction(1, 1)
    try:
        with container:
            pts = [p.pts for p in container.demux(stream) if p.size and not p.is_discard]
            if any(t is None for t in pts):
                container.seek(0)
                pts = [f.pts if f.pts is not None else i for i, f in enumerate(container.decode(stream))]
    except av.FFmpegError as e:
        raise unreadable(path, e) from None
    if not pts:
        raise PrepError(f"{path}: unreadable video (no frames)")
    return np.array([printed_time(t * (tb.numerator / tb.denominator)) for t in sorted(pts)])


def printed_fps(rate: Optional[Fraction]) -> float:
    """The container's average rate as FFmpeg prints it (two decimals unless whole), which earlier imports recorded."""
    if not rate:
        return 0.0
    d = float(rate)
    return float(round(d)) if round(d * 100) % 100 == 0 else float(f"{d:.2f}")


def video_info(path: Path) -> tuple[int, int, int, float, Optional[float]]:
    """(frames, width, height, container fps, the rate to seek with or None). A rate to seek with exists when every
    frame's timestamp is the first one plus its index over a constant rate (to a tenth of a frame). A time seek then
    lands on a frame index. Otherwise frames must be decoded from the start."""
    container, stream = open_video(path)
    with container:
        w, h, fps = stream.codec_context.width, stream.codec_context.height, printed_fps(stream.average_rate)
    times = packet_times(path)
    seek = None
    if len(times) > 1 and times[-1] > times[0]:
        rate = (len(times) - 1) / (times[-1] - times[0])
        if np.abs(times - times[0] - np.arange(len(times)) / rate).max() <= 0.1 / rate:
            seek = float(rate)
    return len(times), int(w), int(h), fps, seek


class Reader:
    """One open video of this process: frames by index in decoded order, decoded on from where the last read
    stopped when the wanted frame is close ahead, else found by a timestamp seek (constant rate) or by decoding
    from the first frame (no constant rate)."""

    def __init__(self, path: str, fps: Optional[float]):
        self.path, self.fps = path, fps
        self.container, self.stream = open_video(path)
        self.tb = self.stream.time_base or Fraction(1, 1)
        self.t0: Optional[int] = None  # the first frame's pts, set by its decoding
        self.rgb = av.video.reformatter.VideoReformatter()  # one converter to RGB for all its frames
        self.frames = self._decode(restart=True)
        self.ahead = next(self.frames, None)  # the next (index, frame) of the decoder, not yet handed out

    def _decode(self, restart: bool) -> Iterator[tuple[int, av.VideoFrame]]:
        """(index, frame) from the decoder's position: indices from timestamps with a rate, else counted from 0
        (restart: the decoder was moved to the first frame)."""
        try:
            for n, frame in enumerate(self.container.decode(self.stream)):
                if self.t0 is None:
                    self.t0 = frame.pts or 0
                if self.fps and frame.pts is not None:
                    yield round(float((frame.pts - self.t0) * self.tb) * self.fps), frame
                elif restart:
                    yield n, frame
                else:
                    raise PrepError(f"{self.path}: a frame without a timestamp after a seek")
        except av.FFmpegError as e:
            raise unreadable(self.path, e) from None

    def _position(self, start: int) -> None:
        """Move the decoder so that `ahead` is frame `start` or one before it."""
        if self.ahead and self.ahead[0] <= start and (not self.fps or start - self.ahead[0] <= FORWARD):
            return
        if self.fps:  # seek to the keyframe before frame start (half a frame early: timestamps are rounded)
            self.container.seek((self.t0 or 0) + int((start - 0.5) / self.fps / self.tb), stream=self.stream)
            self.frames = self._decode(restart=False)
            self.ahead = next(self.frames, None)
            if self.ahead is None or self.ahead[0] <= start:
                return
        self.container.close()  # no rate (or a seek past it): from the first frame, opened again
        self.container, self.stream = open_video(self.path)
        self.frames = self._decode(restart=True)
        self.ahead = next(self.frames, None)

    def read(self, start: int, count: int, step: int) -> Iterator[np.ndarray]:
        """Frames start, start+step, ... (count of them) as [H, W, 3] uint8 RGB."""
        self._position(start)
        got, last = 0, start - 1
        while self.ahead is not None and got < count:
            idx, frame = self.ahead
            self.ahead = next(self.frames, None)
            if idx < start:
                continue
            last = idx
            if (idx - start) % step == 0:
                got += 1
                yield self.rgb.reformat(frame, format="rgb24").to_ndarray()
        if got < count:
            raise PrepError(f"{self.path}: ended after frame {last} while frame {start + (count - 1) * step} was "
                            f"needed")

    def close(self) -> None:
        self.container.close()


_READERS: dict[tuple[str, Optional[float]], Reader] = {}  # this process's open videos, one reader per video


def read_video(path: Path | str, start: int, count: int, step: int, fps: Optional[float]) -> Iterator[np.ndarray]:
    """Frames start, start+step, ... (count of them, by index in decoded order) as [H, W, 3] uint8, from this
    process's reader of the video. With the container's constant fps it seeks by time when it must; with None it
    decodes from the first frame when it must go back."""
    key = (str(path), fps)
    if key not in _READERS:
        _READERS[key] = Reader(str(path), fps)
    return _READERS[key].read(start, count, step)


def close_readers() -> None:
    """Close this process's open videos (at the end of a step)."""
    while _READERS:
        _READERS.popitem()[1].close()


def foreground(frames: np.ndarray, threshold: int) -> np.ndarray:
    """Mask video frames [..., H, W, 3] uint8 -> bool [..., H, W]: the grey level (mean of R, G, B) >= threshold,
    in integers (the mean of three integers is >= t exactly when their sum is >= 3 t)."""
    total = frames[..., 0].astype(np.uint16)  # [..., H, W]; adding channel by channel beats a reduction over 3
    total += frames[..., 1]
    total += frames[..., 2]
    return total >= 3 * threshold


def box_down(m: np.ndarray, ds: int) -> np.ndarray:
    """bool [..., H, W] -> [..., H/ds, W/ds]: box-average >= 0.5."""
    if ds == 1:
        return m
    h, w = m.shape[-2] // ds * ds, m.shape[-1] // ds * ds
    return m[..., :h, :w].reshape(*m.shape[:-2], h // ds, ds, w // ds, ds).mean((-3, -1)) >= 0.5


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


def read_frames(paths: tuple[str, ...], fps: tuple[Optional[float], ...], views: list[int], j0: int, j1: int,
                jump: int) -> np.ndarray:
    """Output frames j0..j1 (source frames j * jump) of the given views' videos: uint8 [F, V, H, W, 3]."""
    out: Optional[np.ndarray] = None
    for v, c in enumerate(views):
        for f, frame in enumerate(read_video(paths[c], j0 * jump, j1 - j0, jump, fps[c])):
            if out is None:
                out = np.empty((j1 - j0, len(views), *frame.shape), dtype=np.uint8)
            out[f, v] = frame
    assert out is not None  # read_video yields j1 - j0 > 0 frames or raises
    return out


def read_masks(footage: Footage, views: list[int], j0: int, j1: int) -> tuple[np.ndarray, np.ndarray]:
    """(full-resolution masks [F, V, H, W], downsampled masks [F, V, H', W']) of output frames j0..j1."""
    frames = read_frames(footage.mask_videos, footage.mask_fps, views, j0, j1, footage.frame_jump)
    full = foreground(frames, footage.threshold)
    return full, box_down(full, footage.ds)
