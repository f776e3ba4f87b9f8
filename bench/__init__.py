"""sockserve's benchmark harness: ``python -m bench`` from the repository root.

Tools, not the package: this may use anything installed (gcc, wrk, uvloop, gevent,
matplotlib) and skips, with the reason, whatever is missing. It imports nothing heavy at
package level, because every server under test runs ``python -m bench.peers`` and should
carry no more than its own server in memory.
"""
