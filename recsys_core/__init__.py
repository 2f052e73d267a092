"""fedrec's core: data, models, training, metrics, privacy and secure-aggregation maths.

Plain PyTorch and NumPy only; this package never imports Flower.
"""

__version__ = "0.1.0"
