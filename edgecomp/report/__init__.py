"""OUT/report.md, OUT/report.html and OUT/charts/: the manifest, for a person (and several side by side)."""

from .writer import write_comparison_report, write_report  # noqa: F401
