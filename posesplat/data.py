"""Multi-view dataset reader (zarr v3, format in docs/dataset.md): validation, splits, torch tensors.

Every problem raises `DatasetError` with one line naming the store, the array and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from posesplat.gt import KIND_NAMES, inside_body  # noqa: F401 (inside_body: part of the reader's API)

REQUIRED = ("images", "masks", "intrinsics", "extrinsics", "centre", "heading")
MASK_CHECK_FRAMES = 4  # frames whose masks (and background pixels) are checked at open; masks again when loaded
BACKGROUND_TOL = 8  # grey levels: an out-of-mask pixel further than this from `background` counts as foreign
BACKGROUND_SHARE = 0.02  # refuse a view whose out-of-mask pixels are foreign in more than this share


def default_holdout(n_views: int) -> list[int]:
    """Held-out views when a dataset names none: every third camera from camera 1 (6 cameras: [1, 4]; 3-5: [1];
    9: [1, 4, 7]), so at least two thirds stay observed for carving; none below 3 cameras."""
    k = n_views // 3
    return [1 + i * n_views // k for i in range(k)] if k else []


class DatasetError(ValueError):
    """The dataset is missing, malformed, or cannot satisfy the request."""


def _open_group(path: str):
    try:
        return zarr.open_group(path, mode="r")
    except Exception as e:  # zarr raises several types for a missing or foreign store
        raise DatasetError(f"{path}: not a readable zarr dataset ({type(e).__name__}: {e})".splitlines()[0]) from None


class MultiViewDataset:
    """A validated multi-view recording: F frames x C cameras of images, masks and calibrations."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if "://" not in self.path and not Path(self.path).exists():
            raise DatasetError(f"{self.path}: no such dataset (make the default one with `python -m posesplat.synth`)")
        self.root = _open_group(self.path)
        self._validate()
        self._arrays: dict[str, object] = {}  # the arrays frames are read from, opened once (_array)
        self._kept: Optional[dict[tuple, dict[str, torch.Tensor]]] = None  # keep_in_memory's decoded frames
        self._budget, self._used = 0, 0  # bytes
        self._gt_kinds: Optional[np.ndarray] = None  # gt_kinds, read once

    # ------------------------------------------------------------------ validation
    def _err(self, array: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.path}: array '{array}': {problem}")

    def _validate(self) -> None:
        names = set(self.root.array_keys())
        for name in REQUIRED:
            if name not in names:
                raise self._err(name, "missing")
        img, msk = self.root["images"], self.root["masks"]
        if img.ndim != 5 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise self._err("images", f"must be uint8 [F, C, H, W, 3], got {img.dtype} {list(img.shape)}")
        F_, C, H, W, _ = img.shape
        self.n_frames, self.n_views, self.height, self.width = int(F_), int(C), int(H), int(W)
        if tuple(msk.shape) != (F_, C, H, W):
            raise self._err("masks", f"shape {list(msk.shape)} disagrees with images [F, C, H, W] = {[F_, C, H, W]}")
        self.intrinsics = np.asarray(self.root["intrinsics"][:], dtype=np.float64)
        self.extrinsics = np.asarray(self.root["extrinsics"][:], dtype=np.float64)
        cameras = (("intrinsics", self.intrinsics, (C, 3, 3)), ("extrinsics", self.extrinsics, (C, 4, 4)))
        for name, arr, shape in cameras:
            if arr.shape != shape:
                raise self._err(name, f"shape {list(arr.shape)} should be {list(shape)} (views in images: {C})")
            if not np.isfinite(arr).all():
                raise self._err(name, f"non-finite values in camera {int(np.argwhere(~np.isfinite(arr))[0][0])}")
        for c in range(C):
            if abs(np.linalg.det(self.intrinsics[c])) < 1e-12:
                raise self._err("intrinsics", f"camera {c} is singular")
            R = self.extrinsics[c, :3, :3]
            if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0.999:
                raise self._err("extrinsics", f"camera {c}: the 3x3 part is not a rotation (singular or scaled)")
        self.centre = np.asarray(self.root["centre"][:], dtype=np.float64)
        self.heading = np.asarray(self.root["heading"][:], dtype=np.float64)
        if self.centre.shape != (F_, 3):
            raise self._err("centre", f"shape {list(self.centre.shape)} should be [{F_}, 3] (frames in images)")
        if self.heading.shape != (F_,):
            raise self._err("heading", f"shape {list(self.heading.shape)} should be [{F_}] (frames in images)")
        for name, arr in (("centre", self.centre), ("heading", self.heading)):
            if not np.isfinite(arr).all():
                raise self._err(name, f"non-finite value at frame {int(np.argwhere(~np.isfinite(arr))[0][0])}")
        if "holdout_views" in names:
            hold = np.asarray(self.root["holdout_views"][:])
            if hold.ndim != 1 or not np.issubdtype(hold.dtype, np.integer):
                raise self._err("holdout_views", f"must be integer [K], got {hold.dtype} {list(hold.shape)}")
            self.holdout_views = self._check_views(hold.tolist(), "holdout_views")
        else:
            self.holdout_views = default_holdout(C)
        self.attrs = dict(self.root.attrs)
        self.background = self._check_attrs()
        for f in np.linspace(0, F_ - 1, min(MASK_CHECK_FRAMES, F_)).round().astype(int):
            m = msk[int(f)]
            self._check_mask(m, int(f))
            self._check_background(img[int(f)], m, int(f))
        self.ell = float(self.attrs["ell"]) if "ell" in self.attrs else None
        self.has_gt = "gt" in set(self.root.group_keys())
        self.geometry_note: Optional[str] = "no ground-truth geometry (an imported recording)"
        if self.has_gt:
            self._check_gt(F_)
            self.geometry_note = self._check_gt_geometry(F_, C, H, W)

    def _attr_err(self, key: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.path}: attribute '{key}': {problem}")

    def _check_attrs(self) -> np.ndarray:
        """`up` must be +z, `units` metres, `background` an RGB in [0, 1], `ell` positive; returns the background."""
        a = self.attrs
        up = a.get("up")
        if up is None:
            raise self._attr_err("up", "missing: the world must be z-up (rotate it so, then set up = [0, 0, 1])")
        try:
            up = np.asarray(up, dtype=np.float64).reshape(3)
        except (TypeError, ValueError):
            raise self._attr_err("up", f"must be 3 numbers, got {up!r}") from None
        if not np.isfinite(up).all() or np.linalg.norm(up) == 0 or up @ [0, 0, 1] < 0.9999 * np.linalg.norm(up):
            raise self._attr_err("up", f"is {up.tolist()}: the world must be z-up; rotate the cameras, centres and "
                                       f"headings so up is +z and set up = [0, 0, 1] (posesplat.prep does this)")
        if a.get("units", "m") != "m":
            raise self._attr_err("units", f"is {a['units']!r}: world coordinates must be metres ('m')")
        if "background" not in a:
            raise self._attr_err("background", "missing: the RGB colour (in [0, 1]) of images outside the masks")
        try:
            bg = np.asarray(a["background"], dtype=np.float64).reshape(3)
        except (TypeError, ValueError):
            raise self._attr_err("background", f"must be 3 numbers in [0, 1], got {a['background']!r}") from None
        if not (np.isfinite(bg).all() and (bg >= 0).all() and (bg <= 1).all()):
            raise self._attr_err("background", f"must be 3 numbers in [0, 1], got {bg.tolist()}")
        if "ell" in a and not (isinstance(a["ell"], (int, float)) and np.isfinite(a["ell"]) and a["ell"] > 0):
            raise self._attr_err("ell", f"must be a positive number (metres), got {a['ell']!r}")
        return bg

    def _check_background(self, img: np.ndarray, masks: np.ndarray, frame: int) -> None:
        """Out-of-mask pixels [C, H, W, 3] must be the `background` colour: renders are scored against it."""
        ref = np.round(self.background * 255)
        for c in range(len(img)):
            out = img[c][masks[c] == 0].astype(np.float64)  # [N, 3]
            if not len(out):
                continue
            foreign = (np.abs(out - ref).max(1) > BACKGROUND_TOL).mean()
            if foreign > BACKGROUND_SHARE:
                seen = np.median(out, axis=0).round().astype(int).tolist()
                raise self._err("images", f"frame {frame}, view {c}: {foreign:.0%} of the pixels outside the mask "
                                          f"differ from the background attribute {ref.astype(int).tolist()}/255 "
                                          f"(median there {seen}): set 'background' or composite the images on it")

    def _check_gt(self, n_frames: int) -> None:
        """The optional ground truth: `gt/params` float [F, P, 10] finite, `gt/kind` integer [P] of known kinds."""
        g = self.root["gt"]
        arrays = set(g.array_keys())
        for name in ("params", "kind"):
            if name not in arrays:
                raise self._err(f"gt/{name}", "missing (a gt group needs both gt/params and gt/kind)")
        p, kind = g["params"], np.asarray(g["kind"][:])
        if p.ndim != 3 or p.shape[2] != 10 or not np.issubdtype(p.dtype, np.floating):
            raise self._err("gt/params", f"must be float [F, P, 10], got {p.dtype} {list(p.shape)}")
        if p.shape[0] != n_frames:
            raise self._err("gt/params", f"has {p.shape[0]} frames, images have {n_frames}")
        if kind.shape != (p.shape[1],) or not np.issubdtype(kind.dtype, np.integer):
            raise self._err("gt/kind", f"must be integer [P] with P = {p.shape[1]} (primitives in gt/params), got "
                                       f"{kind.dtype} {list(kind.shape)}")
        unknown = sorted(set(kind.tolist()) - set(KIND_NAMES))
        if unknown:
            raise self._err("gt/kind", f"unknown kind {unknown[0]} (known: {KIND_NAMES})")
        for f in sorted({0, n_frames - 1}):
            prims = np.asarray(p[f])
            if not np.isfinite(prims).all():
                raise self._err("gt/params", f"non-finite values in frame {f}")
            ell, cap = prims[kind == 0, 7:10], prims[kind == 1, 7:9]
            if (ell <= 0).any() or (cap[:, 0] < 0).any() or (cap[:, 1] <= 0).any():
                raise self._err("gt/params", f"frame {f}: sizes (columns 7-9) must be positive (capsule length >= 0)")

    def _check_gt_geometry(self, n_frames: int, n_views: int, height: int, width: int) -> Optional[str]:
        """`gt/depth` float [F, C, H, W] and `gt/normal` float [F, C, H, W, 3] (format 2): None when present, else
        the one line saying why the geometry metrics are NaN."""
        arrays = set(self.root["gt"].array_keys())
        if not {"depth", "normal"} & arrays:
            version = self.attrs.get("format_version", 1)
            return (f"{self.path}: format_version {version} has no gt/depth and gt/normal (added in format 2): geometry "
                    f"metrics are NaN; regenerate it with `python -m posesplat.synth --force`")
        want = {"depth": (n_frames, n_views, height, width), "normal": (n_frames, n_views, height, width, 3)}
        for name, shape in want.items():
            if name not in arrays:
                raise self._err(f"gt/{name}", "missing (gt/depth and gt/normal come together)")
            a = self.root["gt"][name]
            if tuple(a.shape) != shape or not np.issubdtype(a.dtype, np.floating):
                raise self._err(f"gt/{name}", f"must be float {list(shape)}, got {a.dtype} {list(a.shape)}")
        return None

    def _check_mask(self, m: np.ndarray, frame: int) -> None:
        bad = (m != 0) & (m != 1)
        if bad.any():
            raise self._err("masks", f"frame {frame} has values outside {{0, 1}} (e.g. {int(m[bad].flat[0])})")

    def _check_views(self, views: Sequence[int], what: str) -> list[int]:
        views = [int(v) for v in views]
        for v in views:
            if not 0 <= v < self.n_views:
                raise self._err(what, f"view index {v} out of range [0, {self.n_views})")
        if len(set(views)) != len(views):
            raise self._err(what, f"repeated view index in {views}")
        return views

    # ------------------------------------------------------------------ splits
    def frame_split(
        self, max_frames: Optional[int] = None, frame_jump: int = 1, split: Sequence[float] = (1 / 3, 1 / 3, 1 / 3)
    ) -> dict[str, np.ndarray]:
        """Contiguous train / valid / test blocks of the frames (every frame_jump-th, the first max_frames)."""
        if frame_jump < 1:
            raise self._err("images", f"frame_jump must be >= 1, got {frame_jump}")
        frames = np.arange(0, self.n_frames, frame_jump)
        if max_frames is not None:
            if max_frames > len(frames):
                raise self._err("images", f"max_frames {max_frames} is larger than the {len(frames)} frames available "
                                          f"(with frame_jump {frame_jump})")
            frames = frames[:max_frames]
        edges = np.round(np.cumsum([0, *split]) * len(frames)).astype(int)
        out = {name: frames[edges[i]: edges[i + 1]] for i, name in enumerate(("train", "valid", "test"))}
        for name, block in out.items():
            if len(block) == 0:
                raise self._err("images", f"the {name} split is empty ({len(frames)} frames, split {list(split)})")
        return out

    def view_split(self, holdout: Optional[Sequence[int]] = None) -> tuple[list[int], list[int]]:
        """(observed, held-out) view indices; holdout None means the dataset's own."""
        held = self.holdout_views if holdout is None else self._check_views(holdout, "holdout_views")
        observed = [v for v in range(self.n_views) if v not in held]
        if not observed:
            raise self._err("holdout_views", "every view is held out; at least one must be observed")
        return observed, held

    # ------------------------------------------------------------------ loading
    def keep_in_memory(self, budget_mb: float) -> None:
        """From now on `load` and `gt_geometry` decode every view of a frame once and keep it (downsampled). They
        do so while the kept tensors fit in `budget_mb`. Other frames are read from the store each time, their chosen
        views only, as without it (budget 0: always). A training run then reads each frame once instead of at every step
        and evaluation. The tensors returned are copies either way."""
        self._kept = {} if budget_mb > 0 else None
        self._budget, self._used = int(budget_mb * 2**20), 0

    def _array(self, name: str):
        """The zarr array at `name` ("images", "gt/depth"), looked up in the store once (a lookup costs about as
        much as reading a small frame)."""
        if name not in self._arrays:
            self._arrays[name] = self.root[name]
        return self._arrays[name]

    def kept_mb(self) -> float:
        """Memory held by keep_in_memory's frames (MB)."""
        return self._used / 2**20

    def _kept_frame(self, key: tuple, decode_all, nbytes: Optional[int] = None) -> Optional[dict]:
        """Every view of the frame `key` = (kind, frame, downsample): kept, or decoded by decode_all() and kept when
        it fits in the budget (`nbytes`, default 16 bytes a pixel and view: RGB and mask, or depth and normal); None
        when it does not fit (the caller reads the views it needs)."""
        if self._kept is None:
            return None
        if key not in self._kept:
            if nbytes is None:
                nbytes = 16 * (self.height // key[2]) * (self.width // key[2]) * self.n_views
            if self._used + nbytes > self._budget:
                return None
            self._kept[key] = decode_all()
            self._used += sum(t.nbytes for t in self._kept[key].values())
        return self._kept[key]

    def load(self, frame: int, views: Sequence[int], downsample: int = 1) -> dict[str, torch.Tensor]:
        """One frame's chosen views as float tensors, box-downsampled by an integer factor."""
        if not 0 <= frame < self.n_frames:
            raise self._err("images", f"frame {frame} out of range [0, {self.n_frames})")
        views = self._check_views(views, "images")
        if downsample < 1 or self.height < downsample or self.width < downsample:
            raise self._err("images", f"downsample {downsample} does not fit images of {self.height}x{self.width}")
        every = self._kept_frame(("images", frame, downsample),
                                 lambda: self._decode(frame, list(range(self.n_views)), downsample))
        if every is None:
            return self._decode(frame, views, downsample)
        pick = torch.tensor(views)
        return {**{k: every[k][pick] for k in ("images", "masks", "Ks", "viewmats")},
                **{k: every[k].clone() for k in ("centre", "heading", "frame")}, "views": pick}

    def _decode(self, frame: int, views: list[int], downsample: int) -> dict[str, torch.Tensor]:
        """`load`'s tensors read from the store (views checked)."""
        img = self._array("images")[frame][views]  # [V, H, W, 3] uint8
        msk = self._array("masks")[frame][views]
        self._check_mask(msk, frame)
        images = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255)
        masks = torch.from_numpy(np.ascontiguousarray(msk)).float()
        Ks = torch.from_numpy(self.intrinsics[views]).float()
        if downsample > 1:
            images = F.avg_pool2d(images.permute(0, 3, 1, 2), downsample).permute(0, 2, 3, 1).contiguous()
            masks = (F.avg_pool2d(masks[:, None], downsample)[:, 0] >= 0.5).float()
            Ks = Ks.clone()
            Ks[:, :2] /= downsample
        return {
            "images": images, "masks": masks, "Ks": Ks,
            "viewmats": torch.from_numpy(self.extrinsics[views]).float(),
            "centre": torch.from_numpy(self.centre[frame]).float(),
            "heading": torch.tensor(self.heading[frame], dtype=torch.float32),
            "frame": torch.tensor(frame), "views": torch.tensor(views),
        }

    def gt(self, frame: int) -> Optional[np.ndarray]:
        """Ground-truth primitives of a frame [P, 10] (docs/dataset.md), or None. With keep_in_memory, the whole
        array is read once and kept when it fits the budget (the synthetic data stores it as one chunk, so a frame
        costs a read of all of them)."""
        if not self.has_gt:
            return None
        every = self._kept_frame(("gt/params",), lambda: {"params": np.asarray(self._array("gt/params")[:])},
                                 nbytes=self._array("gt/params").nbytes)
        if every is None:
            return np.asarray(self._array("gt/params")[frame])
        return every["params"][frame].copy()

    def gt_geometry(self, frame: int, views: Sequence[int], downsample: int = 1) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """True z-depth [V, H, W] (m, 0 off the body) and outward world normals [V, H, W, 3] of a frame's views, box-
        downsampled over the body's pixels like `load` (normals renormalised); None without them (geometry_note)."""
        if self.geometry_note is not None:
            return None
        views = self._check_views(views, "gt/depth")
        every = self._kept_frame(("gt", frame, downsample), lambda: dict(zip(
            ("depth", "normal"), self._decode_geometry(frame, list(range(self.n_views)), downsample))))
        if every is None:
            return self._decode_geometry(frame, views, downsample)
        pick = torch.tensor(views)
        return every["depth"][pick], every["normal"][pick]

    def _decode_geometry(self, frame: int, views: list[int], downsample: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`gt_geometry`'s tensors read from the store (views checked)."""
        depth = torch.from_numpy(np.asarray(self._array("gt/depth")[frame][views], dtype=np.float32))
        normal = torch.from_numpy(np.asarray(self._array("gt/normal")[frame][views], dtype=np.float32))
        if downsample > 1:
            on = (depth > 0).float()[:, None]  # [V, 1, H, W]
            share = F.avg_pool2d(on, downsample).clamp_min(1e-12)
            depth = (F.avg_pool2d(depth[:, None] * on, downsample) / share)[:, 0]
            normal = F.avg_pool2d(normal.permute(0, 3, 1, 2) * on, downsample).permute(0, 2, 3, 1)
            normal = F.normalize(normal, dim=-1)
        return depth, normal

    def gt_kinds(self) -> Optional[np.ndarray]:
        """The kind of each ground-truth primitive [P] (docs/dataset.md), or None; read once."""
        if not self.has_gt:
            return None
        if self._gt_kinds is None:
            self._gt_kinds = np.asarray(self._array("gt/kind")[:])
        return self._gt_kinds.copy()


def evaluated_frames(frames: np.ndarray, cap: Optional[int]) -> np.ndarray:
    """The evenly spaced subset of at most `cap` of `frames` that evaluation renders (all of them where cap is None
    or not smaller): [n] -> [min(n, cap)]."""
    if cap is None or len(frames) <= cap:
        return frames
    return frames[np.linspace(0, len(frames) - 1, cap).round().astype(int)]


def open_dataset(path: str | Path) -> MultiViewDataset:
    """Open and validate a dataset."""
    return MultiViewDataset(path)


class FrameDataset(torch.utils.data.Dataset):
    """Frames of a dataset for a DataLoader; the store is opened lazily in each worker process."""

    def __init__(self, path: str | Path, frames: Sequence[int], views: Sequence[int], downsample: int = 1):
        self.path, self.frames, self.views, self.downsample = str(path), list(frames), list(views), downsample
        self._ds: Optional[MultiViewDataset] = None

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._ds is None:
            self._ds = open_dataset(self.path)
        return self._ds.load(int(self.frames[i]), self.views, self.downsample)

    def __getstate__(self):
        return {**self.__dict__, "_ds": None}
