"""MER: audio + text emotion recognition research framework."""

__version__ = "0.1.0"
