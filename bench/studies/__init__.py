"""Reproducible studies behind the numbers in ``docs/``: each is ``python -m edgekit.bench.studies.NAME``,
has a ``main()`` that parses its flags with argparse, and does no work on import."""
