"""mapslib: MAPS (Mapping Attention head ParameterS), inferring what attention heads do from their weights."""

__version__ = "0.1.0"
