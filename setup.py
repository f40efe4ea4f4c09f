"""Build of memplan's compiled exact allocator (metadata lives in pyproject.toml).

``memplan/solvers/native/minimalloc.cpp`` is MiniMalloc's search in C++17 with
a plain C ABI; it is built as the shared object ``memplan.solvers._minimalloc``
and loaded with ``ctypes`` (:mod:`memplan.solvers.alloc_native`), so it needs
no Python headers beyond what setuptools uses and no other library. If the
build fails (no C++ compiler), the install goes on without it: the kernel is
then compiled on first use if a compiler appears, else the pure-Python search
is used.
"""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the kernel if a C++ compiler is there; warn and go on if not."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure leaves the Python fallback
            self.warn(f"building {ext.name} failed ({exc}); memplan will compile it on first use "
                      "or use the pure-Python search")

    def get_export_symbols(self, ext):
        return []                    # a ctypes library, not a Python module: there is no PyInit_ to export


setup(
    ext_modules=[Extension(
        "memplan.solvers._minimalloc",
        sources=["memplan/solvers/native/minimalloc.cpp"],
        language="c++",
        extra_compile_args=["-O3", "-std=c++17", "-pthread"],
        extra_link_args=["-pthread"],
    )],
    cmdclass={"build_ext": OptionalBuildExt},
)
