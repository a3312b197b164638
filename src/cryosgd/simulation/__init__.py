"""Simulated particle sets with ground truth: our forward model (``cryosgd simulate``) or RELION's
``relion_project``, both written by one writer as RELION files (``particles.star``, ``truth.star``,
``particles.mrcs``, ``truth.mrc``)."""
from .assembly import symmetric_assembly
from .dataset import SimulationPaths, load_source_volume, simulate_dataset, write_dataset
from .mixture import MixturePaths, simulate_mixture
from .relion import RelionMissing, relion_available, relion_simulate, require_relion

__all__ = ["SimulationPaths", "load_source_volume", "simulate_dataset", "write_dataset",
           "MixturePaths", "simulate_mixture", "RelionMissing", "relion_available", "relion_simulate", "require_relion",
           "symmetric_assembly"]
