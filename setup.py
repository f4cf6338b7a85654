"""Build hook: compile protos/*.proto into kvraft/proto before the package is built.

Everything else about the package lives in pyproject.toml.
"""
import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _compile_protos() -> None:
    path = Path(__file__).resolve().parent / "protos" / "compile.py"
    spec = importlib.util.spec_from_file_location("kvraft_compile_protos", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.compile_protos()


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        _compile_protos()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
