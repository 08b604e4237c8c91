"""edgecomp: compress transformer models for small devices, lower them to portable graphs, measure the result."""

__version__ = "0.1.0"
