//! Noise schedulers (diffusers' `scheduling_*.py`), one file per algorithm.
