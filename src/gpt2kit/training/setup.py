"""Kept only for training/loop.py, which imports these names from here until its rewrite imports them from
their homes: the set-up is dataset.py (the tokens), optimizer.py (what trains, the schedule) and
distributed.py (torchrun)."""
from .distributed import all_reduce_mean, init_distributed
from .optimizer import lr_at

__all__ = ["all_reduce_mean", "init_distributed", "lr_at"]
