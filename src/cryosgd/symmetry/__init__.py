"""Point-group symmetry: RELION's groups, symmetrised maps, asymmetric units, and finding a map's group.

See :mod:`.groups` for the conventions.
"""
from .groups import (
                     asymmetric_unit_mask,
                     asymmetric_unit_share,
                     group_generators,
                     parse_group,
                     point_group,
                     reduce_quadrature,
                     rotation_about,
                     symmetrise,
)

__all__ = ["point_group", "parse_group", "group_generators", "symmetrise", "rotation_about",
           "asymmetric_unit_share", "asymmetric_unit_mask", "reduce_quadrature"]
