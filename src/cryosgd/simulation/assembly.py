"""Symmetric assemblies built from one chain of an atomic model, for tests and benchmarks of
point-group reconstruction (``--symmetry``)."""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np

from ..symmetry.groups import point_group

__all__ = ["symmetric_assembly"]


def symmetric_assembly(model, out, *, chain: str, group: str, offset=(25.0, 0.0, 12.0)) -> Path:
    """Write a PDB file of ``chain`` of ``model`` (PDB/mmCIF, gzipped or not), centred, moved by
    ``offset`` (Å, x y z) and copied by every operator of ``group`` (RELION's orientation, about the
    origin): an assembly with that point group.  Returns ``out``."""
    import gemmi

    ops = point_group(group)
    names = string.ascii_uppercase + string.ascii_lowercase
    if len(ops) > len(names):
        raise ValueError(f"{group} has {len(ops)} operators; at most {len(names)} chains are named")
    st = gemmi.read_structure(str(model))
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    source = st[0][chain]
    centre = np.array([a.pos.tolist() for res in source for a in res]).mean(0)
    assembly = gemmi.Model("1")
    for name, g in zip(names, ops):
        copy = gemmi.Chain(name)
        for res in source:
            new = gemmi.Residue()
            new.name, new.seqid, new.entity_type, new.het_flag = res.name, res.seqid, res.entity_type, res.het_flag
            for atom in res:
                a = gemmi.Atom()
                a.name, a.element, a.occ, a.b_iso = atom.name, atom.element, atom.occ, atom.b_iso
                a.pos = gemmi.Position(*(g @ (np.array(atom.pos.tolist()) - centre + np.asarray(offset))))
                new.add_atom(a)
            copy.add_residue(new)
        assembly.add_chain(copy)
    structure = gemmi.Structure()
    structure.add_model(assembly)
    structure.setup_entities()
    structure.write_pdb(str(out))
    return Path(out)
