"""Build step for the optional compiled part; everything else is in pyproject.toml.

``sockserve.aio._fastpath`` speeds up the async handlers' per-message path. It is
optional: without a C compiler (or Python headers) the build skips it with a warning and
the package runs the same code in pure Python (see src/sockserve/aio/fastpath.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sockserve.aio._fastpath",
            ["src/sockserve/aio/_fastpath.c"],
            optional=True,
        )
    ]
)
