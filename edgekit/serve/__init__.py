"""``edgekit serve``: an OpenAI-compatible HTTP server (needs ``pip install 'edgekit[serve]'``).

- :mod:`~edgekit.serve.params`: request bodies -> validated options and :class:`~edgekit.Sampling`.
- :mod:`~edgekit.serve.app`: the ASGI app (routes, auth, body limit, admission, streaming).
- :mod:`~edgekit.serve.runner`: sequences iterated in worker threads, events handed to the loop.
- :mod:`~edgekit.serve.responses`: OpenAI response objects and logprobs.
- :mod:`~edgekit.serve.metrics`: ``/metrics`` in Prometheus text.
- :mod:`~edgekit.serve.server`: uvicorn, background loading, signals.
"""

from __future__ import annotations
