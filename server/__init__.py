"""fedrec's server side: the Flower ServerApp, strategies, secure aggregation and run records.

Also home of the ``fedrec`` command line, which drives training and simulations.
Depends on ``recsys_core``; never on ``client``.
"""
