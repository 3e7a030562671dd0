"""The embedded synthetic dataset: an articulated mouse walking in an arena, seen by a ring of calibrated cameras.

`python -m posesplat.synth --out data/synthetic_mouse.zarr [--frames N --views C --height H --width W --seed S]`
`python -m posesplat.synth --raw DIR ...` writes the same recording in the raw layout that posesplat.prep imports.

The scene is rendered exactly by analytic ray-primitive intersection (ellipsoids and capsules) with Lambertian
shading on a black background (posesplat.synth_scene), so the models are never graded by a Gaussian splatting
renderer; this module writes it. Deterministic: the same arguments give byte-identical arrays. The format is
documented in docs/dataset.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import h5py
import imageio_ffmpeg
import numpy as np
import zarr

from posesplat.data import default_holdout
from posesplat.io import staging_folder, swap_folder
from posesplat.synth_scene import ELL, FPS, GT_COLUMNS, KINDS, PARTS, render_frames, rotz

GENERATOR_VERSION = "1.1"
FORMAT_VERSION = 2  # 2: gt/depth and gt/normal (docs/dataset.md)
RAW_ELL = 0.26  # the raw recording's prep config: prep centres on the hull's centroid, ahead of the body centre,
# so the tail needs a little more room behind it than ELL gives
RAW_UNIT_PER_M = 1000.0  # the raw recording's calibration is in millimetres, like DANNCE's


class SynthError(ValueError):
    """The generator's arguments cannot make a dataset."""


# ----------------------------------------------------------------------------------------------- the store


def check_holdout(holdout: Optional[Sequence[int]], views: int) -> list[int]:
    """The held-out views: the default ones that exist when None; distinct, in range, leaving one observed."""
    if holdout is None:  # the rule a dataset without holdout_views gets (6 cameras: [1, 4])

        holdout = default_holdout(views)
    holdout = [int(h) for h in holdout]
    if any(not 0 <= h < views for h in holdout) or len(set(holdout)) != len(holdout) or len(holdout) >= views:
        raise SynthError(f"holdout views {holdout}: must be distinct indices in [0, {views}) leaving one observed")
    return holdout


def make_dataset(
    out: str | Path, frames: int = 300, views: int = 6, height: int = 128, width: int = 128, seed: int = 0,
    progress: bool = True, force: bool = False, holdout: Optional[Sequence[int]] = None,
) -> Path:
    """Generate the synthetic store at `out` (built under a temporary name, then renamed)."""
    out = Path(out)
    check_replaceable(out, force, "store")
    holdout = check_holdout(holdout, views)
    scene, rendered = render_frames(frames, views, height, width, seed, progress)
    tmp = staging_folder(out)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    images = root.create_array("images", shape=(frames, views, height, width, 3), chunks=(1, views, height, width, 3),
                               dtype="uint8")
    masks = root.create_array("masks", shape=(frames, views, height, width), chunks=(1, views, height, width),
                              dtype="uint8")
    gt = root.create_group("gt")
    params = gt.create_array("params", shape=(frames, len(PARTS), len(GT_COLUMNS)),
                             chunks=(min(frames, 1024), len(PARTS), len(GT_COLUMNS)), dtype="float32")
    gt.create_array("kind", data=KINDS)
    gt_depth = gt.create_array("depth", shape=(frames, views, height, width), chunks=(1, views, height, width),
                               dtype="float32")
    gt_normal = gt.create_array("normal", shape=(frames, views, height, width, 3),
                                chunks=(1, views, height, width, 3), dtype="float32")
    gt.attrs.update({"columns": GT_COLUMNS, "parts": PARTS, "kinds": {"0": "ellipsoid", "1": "capsule"}})
    for name in ("intrinsics", "extrinsics", "centre", "heading"):
        root.create_array(name, data=scene[name])
    root.create_array("holdout_views", data=np.array(holdout, dtype=np.int64))
    all_params = np.zeros((frames, len(PARTS), len(GT_COLUMNS)), dtype=np.float32)
    for f, prims, img, msk, depth, normal in rendered:
        all_params[f] = prims
        images[f] = img
        masks[f] = msk
        gt_depth[f] = depth
        gt_normal[f] = normal
    params[:] = all_params
    root.attrs.update({
        "generator": "posesplat.synth", "generator_version": GENERATOR_VERSION, "format_version": FORMAT_VERSION,
        "args": {"frames": frames, "views": views, "height": height, "width": width, "seed": seed,
                 "holdout": list(holdout)},
        "ell": ELL, "background": [0.0, 0.0, 0.0], "up": [0.0, 0.0, 1.0], "units": "m", "fps": FPS,
    })
    swap_folder(tmp, out)  # check_replaceable refused `out` unless posesplat wrote it
    return out


# ----------------------------------------------------------------------------------------------- raw recording


def calibration_frame(seed: int) -> np.ndarray:
    """A random similarity [4, 4] from the z-up metric world to a tilted, shifted, millimetre calibration frame."""
    rng = np.random.default_rng([seed, 7])
    axis = np.cross([0.0, 0.0, 1.0], [*rng.normal(size=2), 0.0])
    axis /= np.linalg.norm(axis)
    tilt, yaw = np.radians(rng.uniform(20, 35)), rng.uniform(-np.pi, np.pi)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R = (np.eye(3) + np.sin(tilt) * K + (1 - np.cos(tilt)) * K @ K) @ rotz(yaw)  # Rodrigues, then a yaw
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = RAW_UNIT_PER_M * R, RAW_UNIT_PER_M * rng.uniform(-0.3, 0.3, size=3)
    return M


def raw_background(height: int, width: int, c: int) -> np.ndarray:
    """A static textured background [H, W, 3] uint8 for camera c: prep must remove it with the masks."""
    i, j = np.mgrid[:height, :width]
    checker = ((i // 8 + j // 8 + c) % 2) * 25
    return np.stack([60 + checker + j * 40 // width, 70 + checker, 80 + i * 40 // height], -1).astype(np.uint8)


def make_raw(
    out: str | Path, frames: int = 300, views: int = 6, height: int = 128, width: int = 128, seed: int = 0,
    progress: bool = True, force: bool = False, holdout: Optional[Sequence[int]] = None,
) -> Path:
    """Write the synthetic recording in the Pose Splatter / DANNCE raw layout; returns the prep config's path.

    `out/` gets `camera_params.h5` (world-to-camera in a tilted millimetre frame, OpenCV principal point),
    `videos/C.mp4` (RGB over a textured background), `mask_videos/C.mp4`, `prep.json` and `truth.npz` (the ground
    truth and `calib_from_world`, the similarity from the z-up metric world into the calibration frame).
    """
    out = Path(out)
    check_replaceable(out, force, "raw")
    if height % 2 or width % 2:
        raise SynthError(f"--height {height} and --width {width} must be even for H.264 video")
    holdout = check_holdout(holdout, views)
    scene, rendered = render_frames(frames, views, height, width, seed, progress)
    M = calibration_frame(seed)
    tmp = staging_folder(out)
    (tmp / "videos").mkdir(parents=True)
    (tmp / "mask_videos").mkdir()
    Es = scene["extrinsics"] @ np.linalg.inv(M)  # calibration units -> world -> camera (metres)
    Es[:, :3, :] *= RAW_UNIT_PER_M  # camera coordinates in calibration units: only the scale of t changes
    Ks = scene["intrinsics"].copy()
    Ks[:, :2, 2] -= 0.5  # OpenCV: the centre of the top-left pixel is (0, 0)
    with h5py.File(tmp / "camera_params.h5", "w") as h:
        g = h.create_group("camera_parameters")
        g["rotation"], g["translation"], g["intrinsic"] = Es[:, :3, :3], Es[:, :3, 3], Ks
    kw = dict(size=(width, height), fps=FPS, codec="libx264", quality=10, macro_block_size=2)  # crf 0
    writers = [imageio_ffmpeg.write_frames(str(tmp / d / f"{c}.mp4"), **kw)
               for d in ("videos", "mask_videos") for c in range(views)]
    for w in writers:
        w.send(None)
    backgrounds = [raw_background(height, width, c) for c in range(views)]
    params = np.zeros((frames, len(PARTS), len(GT_COLUMNS)), dtype=np.float32)
    for f, prims, img, msk, _, _ in rendered:
        params[f] = prims
        for c in range(views):
            m = msk[c, ..., None].astype(bool)
            writers[c].send(np.ascontiguousarray(np.where(m, img[c], backgrounds[c])))
            writers[views + c].send(np.ascontiguousarray(np.repeat(msk[c, ..., None] * 255, 3, -1).astype(np.uint8)))
    for w in writers:
        w.close()
    config = {
        "data_directory": str(out.resolve()), "project_directory": str(out.resolve()), "camera_fn": "camera_params.h5",
        "video_fns": [f"videos/{c}.mp4" for c in range(views)],
        "mask_video_fns": [f"mask_videos/{c}.mp4" for c in range(views)],
        "image_downsample": 1, "frame_jump": 1, "holdout_views": holdout, "ell_m": RAW_ELL, "grid_size": 48,
        "fps": FPS, "unit_m": 1.0 / RAW_UNIT_PER_M,
    }
    (tmp / "prep.json").write_text(json.dumps(config, indent=2) + "\n")
    np.savez(tmp / "truth.npz", centre=scene["centre"], heading=scene["heading"], params=params, kinds=KINDS,
             calib_from_world=M, intrinsics=scene["intrinsics"], extrinsics=scene["extrinsics"])
    swap_folder(tmp, out)  # check_replaceable refused `out` unless posesplat wrote it
    return out / "prep.json"


RAW_FILES = ("prep.json", "truth.npz", "camera_params.h5")


def written_here(path: Path) -> bool:
    """Whether `path` is something this module wrote: a zarr store whose `generator` attribute is posesplat's, or a
    raw recording folder holding exactly the files make_raw writes (and nothing else)."""
    if (path / "zarr.json").is_file():
        try:
            attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
        except (OSError, ValueError):
            return False
        return str(attrs.get("generator", "")).startswith("posesplat.")
    if path.is_dir() and all((path / f).is_file() for f in RAW_FILES):
        return {p.name for p in path.iterdir()} <= {*RAW_FILES, "videos", "mask_videos"}
    return False


def check_replaceable(out: Path, force: bool, kind: str) -> None:
    """Refuse to replace `out` unless --force is given and `out` is a store or recording posesplat wrote: --force
    never deletes a user's folder (`--out data --force` would otherwise wipe data/)."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise FileExistsError(f"{out}: already exists (pass --force to replace it)")
    if not written_here(out):
        what = "a zarr store with a posesplat generator attribute" if kind == "store" else \
            f"a synthetic raw recording ({', '.join(RAW_FILES)}, videos/, mask_videos/ and nothing else)"
        raise SynthError(f"{out}: exists and is not {what}: --force replaces only what posesplat wrote; "
                         f"choose another path or remove it yourself")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posesplat.synth", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="data/synthetic_mouse.zarr", help="zarr v3 store to write")
    p.add_argument("--raw", metavar="DIR", help="instead, write a raw Pose Splatter-layout recording (videos, "
                                                "camera HDF5, prep.json) into DIR")
    p.add_argument("--frames", type=int, default=300, help="frames of the recording (at least 3)")
    p.add_argument("--views", type=int, default=6, help="cameras, on a ring around the arena")
    p.add_argument("--height", type=int, default=128, help="image height in pixels (at least 16)")
    p.add_argument("--width", type=int, default=128, help="image width in pixels (at least 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mouse's motion, shape and colours")
    p.add_argument("--holdout", type=int, nargs="*", default=None,
                   help="held-out view indices (default: 1 4, those that exist, leaving two observed)")
    p.add_argument("--force", action="store_true", help="replace a store or recording that posesplat wrote")
    a = p.parse_args(argv)
    for name in ("frames", "views", "height", "width"):
        if getattr(a, name) < (3 if name == "frames" else 1 if name == "views" else 16):
            print(f"error: --{name} {getattr(a, name)} is too small", file=sys.stderr)
            return 2
    target = a.raw or a.out
    make = make_raw if a.raw else make_dataset
    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: {target}: cannot create its folder {Path(target).parent} ({e.strerror})", file=sys.stderr)
        return 2
    try:
        path = make(target, a.frames, a.views, a.height, a.width, a.seed, force=a.force, holdout=a.holdout)
    except (FileExistsError, SynthError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:  # e.g. a read-only folder: one line, not a traceback
        print(f"error: {e.filename or target}: permission denied (cannot write the {'recording' if a.raw else 'store'}"
              f" there)", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
