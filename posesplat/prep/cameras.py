"""The cameras step: the calibration HDF5 read into metric OpenCV cameras, with its unit found and checked by the
rig's size, and Pose Splatter's length unit measured from the camera centres."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from posesplat.prep.cache import PREP_VERSION, cached_step, fingerprint
from posesplat.prep.config import PrepConfig
from posesplat.prep.errors import PrepError
from posesplat.prep.inputs import Inputs

CAMERA_GROUP, CAMERA_DATASETS = "camera_parameters", ("rotation", "translation", "intrinsic")  # the camera HDF5
CAMERA_DISTANCE_M = (0.05, 20.0)  # a lab rig's cameras stand this far (metres) from the point they look at


def read_cameras(cfg: PrepConfig, path: Path, n_views: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera HDF5 -> intrinsics [C,3,3] (gsplat pixel convention, not yet downsampled), metric extrinsics [C,4,4]."""
    try:
        with h5py.File(path, "r") as h:
            if not isinstance(h.get(CAMERA_GROUP), h5py.Group):
                found = ", ".join(sorted(h.keys())) or "nothing"
                raise PrepError(f"{path}: missing HDF5 group '{CAMERA_GROUP}' (the file holds: {found})")
            g = h[CAMERA_GROUP]
            for k in CAMERA_DATASETS:
                if not isinstance(g.get(k), h5py.Dataset):
                    found = ", ".join(sorted(g.keys())) or "nothing"
                    raise PrepError(f"{path}: missing HDF5 dataset '{CAMERA_GROUP}/{k}' (the group holds: {found})")
            R, t, K = (np.asarray(g[k][()], dtype=np.float64) for k in CAMERA_DATASETS)
    except OSError as e:
        raise PrepError(f"{path}: not a readable HDF5 file ({e})".splitlines()[0]) from None
    for name, arr, shape in (("rotation", R, (3, 3)), ("translation", t, (3,)), ("intrinsic", K, (3, 3))):
        if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape:
            raise PrepError(f"{path}: camera_parameters/{name} has shape {list(arr.shape)}, expected [C, "
                            f"{', '.join(map(str, shape))}]")
        if len(arr) != n_views:
            raise PrepError(f"{path}: camera_parameters/{name} has {len(arr)} cameras but the config names "
                            f"{n_views} videos")
        if not np.isfinite(arr).all():
            raise PrepError(f"{path}: camera_parameters/{name} has non-finite values")
    for c in range(n_views):
        if not np.allclose(R[c] @ R[c].T, np.eye(3), atol=1e-4) or np.linalg.det(R[c]) < 0.999:
            raise PrepError(f"{path}: camera_parameters/rotation[{c}] is not a rotation matrix")
        if abs(K[c, 2, 2] - 1) > 1e-6 or np.abs(K[c, 2, :2]).max() > 1e-6:
            hint = " (it looks transposed: the principal point is in the bottom row)" if abs(K[c, 2, 0]) > 1 else ""
            raise PrepError(f"{path}: camera_parameters/intrinsic[{c}] must be [[fx,0,cx],[0,fy,cy],[0,0,1]]{hint}")
    K = K.copy()
    if cfg.principal_point == "opencv":
        K[:, :2, 2] += 0.5
    E = np.tile(np.eye(4), (n_views, 1, 1))
    E[:, :3, :3], E[:, :3, 3] = R, t
    return K, E


def camera_centres(Es: np.ndarray) -> np.ndarray:
    """Camera centres [C, 3] (-R^T t) of world-to-camera extrinsics [C, 4, 4]."""
    return -np.einsum("cji,cj->ci", Es[:, :3, :3], Es[:, :3, 3])


def pose_splatter_unit(Es: np.ndarray) -> float:
    """Pose Splatter's length unit in calibration units: its get_cam_params (auto_orient) moves the origin to minus
    the mean camera centre and divides by the largest camera distance from there, so `ell` and `ell_tracking` are
    in units of max_c |C_c + mean(C)|."""
    C = camera_centres(Es)
    return float(np.linalg.norm(C + C.mean(0), axis=1).max())


def look_at_distances(Es: np.ndarray) -> np.ndarray:
    """Distances [C] from each camera to the point nearest all optical axes (where the rig looks)."""
    C, d = camera_centres(Es), Es[:, 2, :3]  # optical axis: the camera's +z in world coordinates
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # projectors orthogonal to each axis
    target = np.linalg.lstsq(P.sum(0), np.einsum("cij,cj->i", P, C), rcond=None)[0]
    return np.linalg.norm(C - target, axis=1)


def metres_per_unit(cfg: PrepConfig, Es: np.ndarray, where: str) -> tuple[float, str]:
    """The calibration's unit in metres (the config's unit_m, else metres when the rig's size is plausible in
    metres) and a line saying so; refuses a scale that puts the cameras implausibly near or far."""
    dist = look_at_distances(Es)
    lo, hi = CAMERA_DISTANCE_M
    unit = cfg.unit_m or 1.0
    d_m = dist * unit
    span = f"{d_m.min():.3g}-{d_m.max():.3g} m" if cfg.unit_m else f"{dist.min():.3g}-{dist.max():.3g} units"
    if not (lo <= np.median(d_m) <= hi):
        hint = " (0.001 if it is in millimetres)" if 50 <= np.median(dist) <= 20000 else ""
        given = f"'unit_m' {cfg.unit_m}" if cfg.unit_m else "'unit_m' unset (metres)"
        raise PrepError(f"{where}: with {given} the cameras stand {span} from the point they look at, implausible "
                        f"for a lab rig ({lo}-{hi} m): set 'unit_m' to the calibration's unit in metres{hint}")
    how = "config unit_m" if cfg.unit_m else "metres assumed (unit_m unset)"
    return unit, f"calibration unit {unit:g} m ({how}): cameras {d_m.min():.3g}-{d_m.max():.3g} m from the rig's centre"


@dataclass(frozen=True, eq=False)
class Rig:
    """The cameras as the per-frame blocks use them."""

    Ks: np.ndarray  # [C, 3, 3] intrinsics in pixels of the downsampled images
    Es: np.ndarray  # [C, 4, 4] world-to-camera extrinsics, metres
    observed: tuple[int, ...]  # the cameras that carve (not held out)


@dataclass(frozen=True, eq=False)
class Cameras:
    """The cameras step's output (cameras.npz) and its fingerprint, an input of the later steps' fingerprints."""

    Ks: np.ndarray  # [C, 3, 3] intrinsics in pixels of the downsampled images
    Es: np.ndarray  # [C, 4, 4] world-to-camera extrinsics in the calibration frame, metres
    unit_m: float  # metres per calibration unit
    ps_unit_m: float  # Pose Splatter's length unit (ell, ell_tracking) in metres
    distances: np.ndarray  # [C] metres from each camera to the point the rig looks at
    fp: str


def calibrate(cfg: PrepConfig, path: Path, n_views: int) -> dict[str, np.ndarray]:
    """The camera HDF5 -> cameras.npz's arrays: metric cameras for the downsampled images and the units found."""
    ds = cfg.image_downsample
    K, E = read_cameras(cfg, path, n_views)
    unit, line = metres_per_unit(cfg, E, str(path))
    ps_unit = pose_splatter_unit(E) * unit
    K[:, :2] /= ds
    E[:, :3, 3] *= unit
    return {"intrinsics": K, "extrinsics": E, "unit_m": np.array(unit), "ps_unit_m": np.array(ps_unit),
            "unit_line": np.array(line), "distances": look_at_distances(E)}


def cameras_step(inp: Inputs) -> Cameras:
    """The cameras, computed or read back from the work folder, and a line on the units."""
    cfg, C = inp.cfg, inp.n_views
    fp = fingerprint(PREP_VERSION, inp.source["camera"], cfg.unit_m, cfg.principal_point, cfg.image_downsample, C)
    cams = cached_step(inp.work / "cameras.npz", fp, lambda: calibrate(cfg, inp.files["camera"], C), inp.log)
    out = Cameras(cams["intrinsics"], cams["extrinsics"], float(cams["unit_m"]), float(cams["ps_unit_m"]),
                  cams["distances"], fp)
    inp.log(f"{cams['unit_line']}; Pose Splatter's unit (ell, ell_tracking) is {out.ps_unit_m:.4g} m")
    return out
