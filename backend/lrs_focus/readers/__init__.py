"""Raster reading in kernel-confined child processes (issue 20): `serve` opens and reads every
raster of a request through a `ReaderPool` (pool.py) of readers (child.py) confined by Landlock
and seccomp (confine.py); `ConfinedSource` (source.py) is what the engine sees. Nothing here is
imported by the engine unless a pool is given to it, and the readers never import torch.
"""
