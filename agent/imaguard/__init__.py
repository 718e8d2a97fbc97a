"""imaguard: Linux IMA enforcement driven by package metadata."""

__all__ = ["__version__"]

__version__ = "0.1.0"
