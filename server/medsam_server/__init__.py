"""MedSAM2 inference engine, service and CLI for the MedSAMSegment Slicer extension."""

__version__ = "0.1.0"
