"""The vocabulary and settings every stage shares: constants, labels, the series views, configs, presets and a
run's parameters, paths, devices, the metric, the faults of a run's inputs, the kernel's offline install."""
