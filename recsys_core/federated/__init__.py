"""Federated learning without Flower: configs, the device-side update and its wire format.

``server/`` and ``client/`` wrap these plain functions in Flower apps; anything both
sides must agree on lives here.
"""
