"""The serving core and the synchronous loop that drives it.

* ``core.py``: admission, counters, stats and episode logs, for every loop.
* ``job.py``: a request's life (handler, error report, close, ticket), run by every
  dispatcher.
* ``selector_loop.py`` with ``loop_threads.py`` and ``pending_preludes.py``: the
  synchronous modes' loop. The async mode's loop is ``aio/serve_loop.py``.
"""
