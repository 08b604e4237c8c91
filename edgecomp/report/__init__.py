"""OUT/report.md (and OUT/size_breakdown.png): the manifest, for a person."""

from .markdown import write_report  # noqa: F401
