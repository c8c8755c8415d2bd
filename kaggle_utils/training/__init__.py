"""Training: the two stages' datasets and loaders, the augmentation on the device, the tasks, the one training
loop, the runs over presets and folds, crops with stage 1's error, and round 2 (noisy and pseudo labels)."""
