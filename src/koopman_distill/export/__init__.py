"""Shipping a distilled generator: a standalone directory (safetensors, config, loader) and
an ONNX graph (``kdm export``)."""

from .bundle import ExportCheck, check_export, describe, export_run
from .generator import OneStepGenerator, load

__all__ = ["ExportCheck", "OneStepGenerator", "check_export", "describe", "export_run", "load"]
