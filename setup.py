"""Build script: maps the repository layout onto the ``pyctr`` package and compiles the Cython speedups.

``core/`` is the package ``pyctr``, ``plugins/`` is ``pyctr.plugins`` and ``_speedups/`` is
``pyctr._speedups``.  Set ``PYCTR_NO_EXTENSIONS=1`` at build time to skip compiling (the pure-Python
twins are always installed).  Beside the extensions, ``build_ext`` links the static helper
``pyctr-seccomp-exec`` from ``_speedups/seccomp_exec.c`` (see ``pyctr/seccomp_filter.py``); without a
C library to link statically it is left out, and batches let runc compile seccomp profiles.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HELPER = "pyctr-seccomp-exec"


def _packages() -> tuple[list[str], dict[str, str]]:
    packages = ["pyctr"]
    package_dir = {"pyctr": "core", "pyctr.plugins": "plugins", "pyctr._speedups": "_speedups"}
    for sub in find_packages("core"):
        packages.append(f"pyctr.{sub}")
    packages.append("pyctr.plugins")
    for sub in find_packages("plugins"):
        packages.append(f"pyctr.plugins.{sub}")
    packages.append("pyctr._speedups")
    return packages, package_dir


def _extensions() -> list[Extension]:
    if os.environ.get("PYCTR_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize

    exts = []
    for name in sorted(os.listdir("_speedups")):
        if name.endswith(".pyx"):
            mod = name[:-4]
            libs = ["crypto"] if mod == "_digest_c" else []
            exts.append(
                Extension(f"pyctr._speedups.{mod}", [f"_speedups/{name}"], libraries=libs,
                          extra_compile_args=["-O2"])
            )
    return list(
        cythonize(exts, language_level="3", compiler_directives={"boundscheck": False, "wraparound": False})
    )


class BuildExt(build_ext):
    """``build_ext`` that also links the static seccomp helper next to the extensions."""

    def run(self) -> None:
        super().run()
        out_dir = "_speedups" if self.inplace else os.path.join(self.build_lib, "pyctr", "_speedups")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, HELPER)
        cc = os.environ.get("CC", "cc").split()
        cmd = [*cc, "-O2", "-Wall", "-static", "-o", out + ".tmp", "_speedups/seccomp_exec.c"]
        try:
            subprocess.run(cmd, check=True)
            with contextlib.suppress(OSError):  # strip is optional
                subprocess.run(["strip", out + ".tmp"], check=False)
            os.chmod(out + ".tmp", 0o755)
            os.replace(out + ".tmp", out)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"warning: {HELPER} not built ({e}); batches will let runc compile seccomp profiles",
                  file=sys.stderr)


packages, package_dir = _packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"pyctr": ["py.typed"], "pyctr._speedups": ["*.pyx", "*.pxd", "*.pyi"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
