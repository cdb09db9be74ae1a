"""The training engine: one loop for every method (trainer.py), with its device and precision
(device.py), the epoch and evaluation steps (loop.py), the schedule, checkpoints, DDP helpers
and the outcome it hands to the report."""
