"""sokit: factorized second-order methods for neural networks.

The package behind the executable book that re-derives and re-runs
T. George, *Factorized second order methods in neural networks* (M.Sc. thesis,
Université de Montréal, 2017).
"""

__version__ = "0.1.0"
