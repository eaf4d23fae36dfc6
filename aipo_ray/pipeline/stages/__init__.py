"""The stages of one iteration, each a small class over the run directory (see ../stage.py)."""
