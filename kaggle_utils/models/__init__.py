"""The networks (backbones, attention-LSTM heads, localisers, level classifiers), their losses, the resampling
of image batches, checkpoints that rebuild their model, and one stage's prediction from a batch."""
