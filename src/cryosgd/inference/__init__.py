"""Inference: quadrature over poses, likelihood, prior, objective."""
