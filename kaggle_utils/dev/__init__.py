"""Development tools, kept out of the code dataset the kernel imports: the synthetic data generator, the
benchmarks, the notebook runner and publishing to Kaggle."""
