"""The batch layer: many cases from a manifest, and how well a checkpoint did on them.

``cases`` (what a case is, from a manifest row to a label volume), ``run`` (the output
folder's ledger, Ctrl-C, the local runner, the report), ``ray_runner`` (the same cases on
Ray actors) and ``evaluate`` (Dice and NSD with MedSAM's conventions).
"""
