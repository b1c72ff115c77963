"""Experiment definitions, one module per thesis figure or table.

Every module in this package is imported by :func:`sokit.experiments.registry`,
and registers its experiments with :func:`sokit.experiments.register`.
"""
