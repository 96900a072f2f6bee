"""saganet: few-sample H&E classification with a valid-area masking mechanism and a length-aware loss."""
__version__ = "0.1.0"

from .model.gate import gate_mask_pool
from .tissue import MaskConfig, valid_area_mask

__all__ = ["__version__", "gate_mask_pool", "valid_area_mask", "MaskConfig"]
