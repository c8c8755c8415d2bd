"""The deterministic arrays both training stages read, cached once: windows and sizes of native slices, the
sagittal volumes and level crops, the Axial T2 levels placed in 3-D and their stacks and crops."""
