"""The SAE itself: equations (`core`, `sae`), variant plug-ins (`variants/`), and the `SAE` handle with
load/save (`sae_io`). Imports nothing from training, analysis, viz, demo or cli."""
