"""Dispatch strategies: how a request's work runs once the server decided to serve it.

A strategy receives a zero-argument callable and runs it: here and now (``inline``), on a
new thread (``threads``), on a bounded pool of long-lived threads (``thread_pool``) or
in a forked child (``forking``). Strategies never touch a
socket; the server hands them work that already knows its socket. Each mixin in
``mixins.py`` does no more than pick one of these.
"""

from .forking import ForkPerRequest
from .inline import run_inline
from .thread_pool import ThreadPool
from .threads import ThreadPerRequest

__all__ = ["ForkPerRequest", "ThreadPerRequest", "ThreadPool", "run_inline"]
