"""Build script: maps the repository layout onto the ``pyctr`` package and compiles the Cython speedups.

``core/`` is the package ``pyctr``, ``plugins/`` is ``pyctr.plugins`` and ``_speedups/`` is
``pyctr._speedups``.  Set ``PYCTR_NO_EXTENSIONS=1`` at build time to skip compiling (the pure-Python
twins are always installed).
"""

from __future__ import annotations

import os

from setuptools import Extension, find_packages, setup


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


packages, package_dir = _packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"pyctr": ["py.typed"], "pyctr._speedups": ["*.pyx", "*.pxd", "*.pyi"]},
    ext_modules=_extensions(),
    zip_safe=False,
)
