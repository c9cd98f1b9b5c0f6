"""What makes sampling fast: precision choice (and, as they land, caches, few-step schedules,
quantisation and compilation)."""

from wam.inference.precision import autocast_context, bf16_is_faster, resolve_precision

__all__ = ["autocast_context", "bf16_is_faster", "resolve_precision"]
