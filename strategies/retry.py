"""Retry policy as a value object: initial delay, multiplier, cap, attempts, jitter.

The model lives in :mod:`octopus_crm.core.policies` (it is part of the configuration schema).
"""

from __future__ import annotations

from octopus_crm.core.policies import RetryPolicy

__all__ = ["RetryPolicy"]
