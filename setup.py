"""Only the optional C accelerator of the sink's encoder; everything else is configured in pyproject.toml.

`optional=True`: without a C compiler or the Python headers the install still succeeds and LineEncoder
takes its pure-Python path (gateway.sink.lineproto.ACCELERATED says which one runs)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.sink._lineenc",
            sources=["gateway/sink/_lineenc.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        )
    ]
)
