"""Pure-Python side of MedSAMSegment's link to medsam-server: protocol, client, worker launcher.

No torch and no slicer import: 3D Slicer bundles this package as it is, and the
server package imports its protocol module, so messages are defined once.
"""
