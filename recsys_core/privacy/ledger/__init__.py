"""The privacy ledger of a run: what was protected, how, and every schedule needed to recompute epsilon.

A ledger is plain JSON. It records the unit of privacy and neighbouring relation, the
mechanisms and their parameters, each device's DP-SGD schedule and the rounds it
joined, and the epsilons the run reported.

- :mod:`.schema`: the sections and entries, and :class:`LedgerError`.
- :mod:`.build`: a run's ledger from its accountants and settings.
- :mod:`.io`: the JSON file; :func:`load_ledger` names the file and the bad field on error.
- :mod:`.verification`: consistency checks, and :func:`recompute` / :func:`verify` of every epsilon.
"""

from recsys_core.privacy.ledger.build import (
    build_ledger,
    device_privacy,
    local_privacy_record,
    user_level_privacy_record,
)
from recsys_core.privacy.ledger.io import load_ledger, write_ledger
from recsys_core.privacy.ledger.schema import (
    LOCAL_MECHANISM,
    LOCAL_NEIGHBOURING_RELATION,
    LOCAL_UNIT_OF_PRIVACY,
    SCHEMA_VERSION,
    USER_MECHANISM,
    USER_NEIGHBOURING_RELATION,
    USER_UNIT_OF_PRIVACY,
    DevicePrivacy,
    EpsilonSummary,
    LedgerError,
    LibraryVersions,
    LocalPrivacyRecord,
    PrivacyLedger,
    UserLevelPrivacyRecord,
)
from recsys_core.privacy.ledger.verification import RecomputedPrivacy, recompute, verify

__all__ = [
    "LOCAL_MECHANISM",
    "LOCAL_NEIGHBOURING_RELATION",
    "LOCAL_UNIT_OF_PRIVACY",
    "SCHEMA_VERSION",
    "USER_MECHANISM",
    "USER_NEIGHBOURING_RELATION",
    "USER_UNIT_OF_PRIVACY",
    "DevicePrivacy",
    "EpsilonSummary",
    "LedgerError",
    "LibraryVersions",
    "LocalPrivacyRecord",
    "PrivacyLedger",
    "RecomputedPrivacy",
    "UserLevelPrivacyRecord",
    "build_ledger",
    "device_privacy",
    "load_ledger",
    "local_privacy_record",
    "recompute",
    "user_level_privacy_record",
    "verify",
    "write_ledger",
]
