"""Baselines beside the stochastic optimisers: direct reconstruction from known poses
(:mod:`.backproject`) and projection matching (:mod:`.projmatch`)."""
