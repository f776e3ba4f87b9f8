"""Dispatch strategies: how a request's work runs once the server decided to serve it.

A strategy receives a zero-argument callable and runs it: here and now (``inline``), on a
new thread (``threads``) or in a forked child (``forking``). Strategies never touch a
socket; the server hands them work that already knows its socket. Each mixin in
``mixins.py`` does no more than pick one of these.
"""

from .forking import ForkPerRequest
from .inline import run_inline
from .threads import ThreadPerRequest

__all__ = ["ForkPerRequest", "ThreadPerRequest", "run_inline"]
