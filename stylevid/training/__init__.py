"""Training: the motion-module trainer, checkpoints, distributed helpers."""
