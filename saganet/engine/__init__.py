"""Inference on tiles from a bundle, with one of several backends behind one interface."""
from .base import BACKENDS, Engine, EngineError, backend_status

__all__ = ["BACKENDS", "Engine", "EngineError", "backend_status"]
