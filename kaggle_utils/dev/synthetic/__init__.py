"""A small synthetic dataset in the exact competition layout, with pathology that is visible where it belongs.

Each study is one analytic 3-D lumbar-spine phantom in DICOM patient coordinates (mm, LPS: +x patient
left, +y posterior, +z superior). Every slice of every series is rendered by sampling the phantom at
that slice's pixel centres, and every keypoint is a 3-D landmark of the phantom projected into the
series' pixel grid, so images, geometry and coordinates agree exactly.

Severities are drawn per study from a latent degeneration factor that grows towards the lower levels
and is shared across conditions, then shape the anatomy: spinal canal stenosis narrows the canal
behind the disc on the middle sagittal slices, foraminal narrowing shrinks that side's foramen on
that side's lateral slices, subarticular stenosis closes that side's lateral recess.

``label_noise`` flips a known fraction of the labelled ``train.csv`` cells to another severity (the images keep
the truth) and lists them in ``label_flips.csv`` beside the competition files (columns ``study_id, row_id,
condition, level, true, given``, severities as ``train.csv`` writes them), so noisy-label detection can be scored.
Without it no such file is written and every file keeps the competition layout either way.

CLI: ``python -m kaggle_utils.dev.synthetic OUT_DIR [--train N] [--test M] [--seed S] [--workers W] [--label-noise F]``.

The package: ``anatomy`` (spine tables, conditions, ``Phantom``), ``render`` (painting a phantom onto a grid),
``acquisition`` (series geometry and DICOM writing), ``dataset`` (labels, studies, ``make_dataset``) and
``__main__`` (the CLI).
"""

from kaggle_utils.dev.synthetic.dataset import flip_labels, make_dataset

__all__ = ["flip_labels", "make_dataset"]
