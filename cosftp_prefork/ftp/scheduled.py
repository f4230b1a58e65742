"""Calls scheduled on a pyftpdlib IO loop (``ioloop.call_later``, ``call_every``): cancelled
where the code that made them no longer wants them."""

from __future__ import annotations

from typing import Any, Optional


def cancel(call: Optional[Any]) -> bool:
    """Cancel ``call`` (what ``call_later``/``call_every`` returned, or None for none made);
    return True if it was still scheduled, False if there was none or it had been cancelled
    already (pyftpdlib marks a ``call_later`` cancelled once it ran). Raises nothing."""
    if call is None or call.cancelled:
        return False
    call.cancel()
    return True
