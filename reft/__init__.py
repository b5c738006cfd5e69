"""REFT companion: variable pruning, ensemble distillation and federation primitives.

Modules, one idea of the paper each: ``data``, ``models``, ``measure``, ``train``, ``comm``, and
(as they land) ``tiers``, ``pruning``, ``distill``, ``federation``, ``report``.
"""

__version__ = "0.1.0"
