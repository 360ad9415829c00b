"""The files layer: reading images and prompt files, writing label files on the input's grid.

``volumes`` (scalar volumes in, label volumes out, on exactly the same voxel grid) and
``prompts_file`` (the objects to segment, from JSON). It uses the engine only through
``medsam_server.engine``'s public names, and the engine never imports it.
"""
