"""fedrec's client side: the Flower ClientApp and the on-device SDK.

Depends on ``recsys_core``; never on ``server``.
"""
