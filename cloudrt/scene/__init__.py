"""Whole scenes, NumPy + rasterio (no torch, no model): raster I/O (:mod:`.io`), tiling and blending
(:mod:`.tiling`), streaming sources and sinks (:mod:`.sources`, :mod:`.sinks`), the streaming driver that
runs a backend over a scene and composites the result (:mod:`.driver`), and mask files (:mod:`.masking`).

Submodules are imported directly (``from cloudrt.scene.sources import open_scene``); this package
imports nothing on its own, so readers added here stay independent of each other.
"""
