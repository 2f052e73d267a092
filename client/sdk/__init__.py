"""The on-device SDK: what an app embeds to keep a user's feedback, learn from it and recommend.

* :mod:`.store`: the encrypted local store (AES-256-GCM, scrypt or an app-held key, atomic writes).
"""
