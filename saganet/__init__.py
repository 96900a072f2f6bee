"""saganet: few-sample H&E classification with a valid-area masking mechanism and a length-aware loss.

`saganet.Engine`, `saganet.gate_mask_pool`, `saganet.valid_area_mask` and `saganet.MaskConfig` are
imported on first use, so that `import saganet` (and `saganet --help`) does not pay for torch.
"""
__version__ = "0.1.0"  # the one place: pyproject.toml and CMakeLists.txt read it from here

_LAZY = {"Engine": ".engine", "gate_mask_pool": ".model.gate", "valid_area_mask": ".tissue", "MaskConfig": ".config"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'saganet' has no attribute {name!r}")
