"""kaggle_utils: the logic of a two-stage pipeline for RSNA 2024 lumbar spine classification.

Stage 1 localises two keypoints per disc level on Sagittal T1 and T2/STIR series (and the two subarticular points
of each axial level); stage 2 classifies per-level crop sequences. The notebooks in ``notebooks/`` are thin callers
of these modules, grouped by stage in sub-packages, each importing only from the ones before it: ``core``, ``io``,
``preprocessing``, ``models``, ``inference``, ``evaluation``, ``training`` (and ``dev``, never shipped).
The version is the one ``pyproject.toml`` reads; the notebooks check its major.minor before they import further.
"""

__version__ = "0.2.0"
