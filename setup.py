# Metadata lives in pyproject.toml. The native build (CMake: kernels, saganet._C) is added by the
# native-core work; until then the package is pure Python and gate_mask_pool runs its reference.
from setuptools import setup

setup()
