"""Processing provider and its "Ask raster" algorithm (batch runs and graphical models)."""
