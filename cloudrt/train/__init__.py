"""The training side (torch): data discovery and reading (:mod:`.discovery`), region/scene splits
(:mod:`.splits`), synthetic clouds (:mod:`.synthetic`), the Dataset (:mod:`.dataset`), the cloud-aware loss
(:mod:`.loss`), the training loop (:mod:`.loop`), evaluation (:mod:`.evaluate`) and metrics (:mod:`.metrics`).

Submodules are imported directly; this package imports nothing, so NumPy-only parts (discovery, splits,
synthetic clouds, metrics without SSIM) do not pull in torch. ``python -m cloudrt.train`` (for torchrun)
takes the options of ``cloudrt train``.
"""
