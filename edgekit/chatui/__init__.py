"""The interactive side of ``edgekit chat``: REPL, slash commands, rendering, one-shot answers.

The CLI module (:mod:`edgekit.cli.chat_cmd`) only parses arguments and calls
:func:`edgekit.chatui.session.run`. Everything here builds on the public
runtime API (``edgekit.load``, ``Model``, ``Chat``, ``Stats``).
"""

from __future__ import annotations
