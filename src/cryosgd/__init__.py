"""cryosgd: ab initio cryo-EM reconstruction by stochastic optimisation.

The library behind the ``cryosgd`` command; the main entry points are
:func:`cryosgd.reconstruct.reconstruct` (with :class:`cryosgd.reconstruct.Settings`),
:func:`cryosgd.io.load_particles`, :func:`cryosgd.simulation.simulate_dataset` and
:func:`cryosgd.evaluate.compare_maps`.  Submodules are imported on use, so
``import cryosgd`` stays light.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryosgd")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
