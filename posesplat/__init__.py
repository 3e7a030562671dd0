"""posesplat: Pose Splatter-style multi-view animal reconstruction with 3D, 2D and screen-space Gaussians."""

__version__ = "0.1.0"
