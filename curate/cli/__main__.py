"""``python -m curate.cli``: the same entry point as the installed ``mmcurate`` command."""

from curate.cli import main

main()
