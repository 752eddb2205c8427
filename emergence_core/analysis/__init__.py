"""The statistics stage: pure functions over the metrics table (SPEC section 4)."""

from emergence_core.analysis.emergence import emergence_index, emergence_step

__all__ = ["emergence_index", "emergence_step"]
