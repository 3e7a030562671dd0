"""Multi-view dataset reader (zarr v3, format in docs/dataset.md): validation, splits, torch tensors.

Every problem raises `DatasetError` with one line naming the store, the array and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

REQUIRED = ("images", "masks", "intrinsics", "extrinsics", "centre", "heading")
MASK_CHECK_FRAMES = 4  # frames whose masks are checked at open; every frame is checked again when loaded


class DatasetError(ValueError):
    """The dataset is missing, malformed, or cannot satisfy the request."""


def _open_group(path: str):
    import zarr

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
        hold = np.asarray(self.root["holdout_views"][:]) if "holdout_views" in names else np.zeros(0, int)
        self.holdout_views = self._check_views(hold.tolist(), "holdout_views")
        for f in np.linspace(0, F_ - 1, min(MASK_CHECK_FRAMES, F_)).round().astype(int):
            self._check_mask(msk[int(f)], int(f))
        self.attrs = dict(self.root.attrs)
        self.ell = float(self.attrs["ell"]) if "ell" in self.attrs else None
        self.has_gt = "gt" in set(self.root.group_keys())
        if self.has_gt:
            p = self.root["gt"]["params"]
            if p.shape[0] != F_:
                raise self._err("gt/params", f"has {p.shape[0]} frames, images have {F_}")

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
    def load(self, frame: int, views: Sequence[int], downsample: int = 1) -> dict[str, torch.Tensor]:
        """One frame's chosen views as float tensors, box-downsampled by an integer factor."""
        if not 0 <= frame < self.n_frames:
            raise self._err("images", f"frame {frame} out of range [0, {self.n_frames})")
        views = self._check_views(views, "images")
        if downsample < 1 or self.height < downsample or self.width < downsample:
            raise self._err("images", f"downsample {downsample} does not fit images of {self.height}x{self.width}")
        img = self.root["images"][frame][views]  # [V, H, W, 3] uint8
        msk = self.root["masks"][frame][views]
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
        """Ground-truth primitives of a frame [P, 10] (docs/dataset.md), or None."""
        if not self.has_gt:
            return None
        return np.asarray(self.root["gt"]["params"][frame])

    def gt_kinds(self) -> Optional[np.ndarray]:
        return np.asarray(self.root["gt"]["kind"][:]) if self.has_gt else None


def open_dataset(path: str | Path) -> MultiViewDataset:
    """Open and validate a dataset."""
    return MultiViewDataset(path)


def inside_body(gt: np.ndarray, points: np.ndarray, kinds: Optional[np.ndarray] = None) -> np.ndarray:
    """True for world points [N, 3] inside any ground-truth primitive of one frame (gt [P, 10])."""
    from posesplat.synth import CAPSULE, KINDS, quat_to_rotmat

    kinds = KINDS if kinds is None else kinds
    inside = np.zeros(len(points), dtype=bool)
    for prim, kind in zip(np.asarray(gt, dtype=np.float64), kinds):
        local = (points - prim[:3]) @ quat_to_rotmat(prim[3:7])
        if kind == CAPSULE:
            h, r = prim[7], prim[8]
            along = np.clip(local[:, 0], -h, h)
            inside |= (local[:, 0] - along) ** 2 + local[:, 1] ** 2 + local[:, 2] ** 2 <= r * r
        else:
            inside |= ((local / prim[7:10]) ** 2).sum(1) <= 1.0
    return inside


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
