"""Pure-Python side of MedSAMSegment's link to medsam-server: protocol, client, worker launcher.

The ``medsam-client`` distribution (numpy + requests only): no torch and no slicer import,
so 3D Slicer bundles this package as it is, scripts and notebooks install it alone, and
``medsam-server`` depends on it for its protocol module, so messages are defined once.
"""

__version__ = "0.1.0"  # as client/pyproject.toml; medsam-server pins it
