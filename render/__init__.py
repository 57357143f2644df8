"""The render stage: shape sources, DISN-style cameras, the pyrender renderer and the
ground-truth shape store. ``render.api.render_dataset`` is the entry point other stages
and tests call; ``cdc-aug render`` is its command line.
"""
