"""study: the Ray Tune study comparing 2D and 3D Gaussian splatting for posesplat."""
