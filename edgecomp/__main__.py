"""``python -m edgecomp`` is the ``edgecomp`` command."""

from .cli import main

main()
