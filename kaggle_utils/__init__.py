"""kaggle_utils: the logic of a sagittal-only two-stage pipeline for RSNA 2024 lumbar spine classification.

Stage 1 localises two keypoints per disc level on Sagittal T1 and T2/STIR series; stage 2 classifies
per-level crop sequences. The notebooks in ``notebooks/`` are thin callers of these modules.
"""

__version__ = "0.1.0"
