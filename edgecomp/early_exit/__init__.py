"""Early exits for sequence classifiers: exit heads, τ calibration, stage-split export and the exit runtime.

Importing this package registers the ``sst2-finetune`` model source; the heavy parts (torch) are imported
by the functions that need them.
"""

from . import finetune  # noqa: F401  (registers the "sst2-finetune" model source)


def export_early_exit(*args, **kwargs):
    from .export import export_early_exit as _export

    return _export(*args, **kwargs)
