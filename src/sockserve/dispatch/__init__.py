"""Dispatch strategies: how a request's work runs once the server decided to serve it.

A strategy receives a zero-argument callable (a ``RequestJob``'s step) and runs it: on a
new thread (``threads``), on a bounded pool of long-lived threads (``thread_pool``) or
in a forked child (``forking``). Inline dispatch needs no strategy: a server without a
mixin runs ``process_request`` on the loop's own thread. Strategies never touch a
socket; the server hands them work that already knows its socket. Each mixin in
``mixins.py`` does no more than pick one of these.
"""

from .forking import ForkPerRequest
from .thread_pool import ThreadPool
from .threads import ThreadPerRequest

__all__ = ["ForkPerRequest", "ThreadPerRequest", "ThreadPool"]
