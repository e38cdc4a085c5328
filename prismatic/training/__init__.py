"""Training: distributed setup, strategies (FSDP2 / DDP / single device), checkpoints, metrics, the training loop.

`scripts/pretrain.py` wires these together; each module can also be used on its own (the tests do).
"""
