"""The image-formation model: slicing, CTF, shifts, projection, simulation."""
