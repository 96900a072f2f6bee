"""Metadata lives in pyproject.toml. The native parts are built by the top-level CMakeLists.txt
(the one build description, shared with C++ users): setup.py only drives it.

`pip install --no-build-isolation -e .` configures build/native/ with the environment's torch and
pybind11 and puts saganet/_C*.so, libsaganet.so, libsaganet_torch.so and libsaganet_engine.so (when
the engine is built) into the package.
Environment: SAGANET_TESTS=ON also builds the C++ tests (scripts/native_checks.sh does),
SAGANET_CUDA=AUTO|ON|OFF (CUDA kernels; AUTO builds them when nvcc is found, CUDA_HOME
is honoured), SAGANET_BUILD_DIR (default build/native), CMAKE_CUDA_ARCHITECTURES (default 80;90).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name  # the virtual environment's own (pip install cmake ninja)
    return str(here) if here.is_file() else shutil.which(name)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11
        import torch.utils

        cmake = _tool("cmake")
        if cmake is None:
            raise RuntimeError("cmake >= 3.22 is needed to build saganet's native parts: pip install cmake ninja")
        out = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build = Path(os.environ.get("SAGANET_BUILD_DIR", ROOT / "build" / "native"))
        env = dict(os.environ)
        cuda_home = env.get("CUDA_HOME", "/usr/local/cuda")
        if "CUDACXX" not in env and Path(cuda_home, "bin", "nvcc").is_file():
            env["CUDACXX"] = str(Path(cuda_home, "bin", "nvcc"))
        args = [cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DSAGANET_TORCH=ON",
                "-DSAGANET_PYTHON=ON", f"-DSAGANET_TESTS={env.get('SAGANET_TESTS', 'OFF')}",
                f"-DPython_EXECUTABLE={sys.executable}",
                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
                f"-DSAGANET_CUDA={env.get('SAGANET_CUDA', 'AUTO')}"]
        if env.get("CMAKE_CUDA_ARCHITECTURES"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={env['CMAKE_CUDA_ARCHITECTURES']}")
        ninja = _tool("ninja")
        if ninja and not (build / "CMakeCache.txt").is_file():
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        subprocess.run(args, check=True, env=env)
        subprocess.run([cmake, "--build", str(build), "--parallel", str(os.cpu_count() or 2)], check=True, env=env)
        # The build tree stays self-contained (ctest, cmake --install use it); the package gets copies.
        out.mkdir(parents=True, exist_ok=True)
        for f in [*build.glob("_C.*.so"), *build.glob("libsaganet.so*"), *build.glob("libsaganet_torch.so"),
                  *build.glob("libsaganet_engine.so*")]:
            _copy(f, out / f.name)

    def copy_extensions_to_source(self):
        """Editable installs (pip install -e .) and --inplace: setuptools copies _C into the source
        package; the shared libraries it loads (libsaganet, libsaganet_torch) must go with it."""
        super().copy_extensions_to_source()
        inplace_file, regular_file = self._get_inplace_equivalent(self.get_finalized_command("build_py"), self.extensions[0])
        package, built = Path(inplace_file).parent, Path(regular_file).parent
        for lib in built.glob("lib*.so*"):
            _copy(lib, package / lib.name)


def _copy(src: Path, dst: Path) -> None:
    """Copy a file, or recreate a symlink (libsaganet.so -> libsaganet.so.0 -> ...)."""
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if src.is_symlink():
        dst.symlink_to(os.readlink(src))
    else:
        shutil.copy2(src, dst)


setup(ext_modules=[Extension("saganet._C", sources=[])], cmdclass={"build_ext": CMakeBuild})
