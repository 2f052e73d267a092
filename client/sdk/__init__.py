"""The on-device SDK: what an app embeds to keep a user's feedback, learn from it and recommend.

* :mod:`.device`: :class:`~.device.Device`, the facade: ``record``, ``recommend``, ``personalise``, ``load_bundle``.
* :mod:`.feedback`: feedback kinds and their weights.
* :mod:`.store`: the encrypted local store (AES-256-GCM, scrypt or an app-held key, atomic writes).

docs/client-sdk.md documents the API with a runnable example.
"""
