"""The one parser for layer lists typed by users: '4,5,6', '4-8', '4-6,9'."""

from __future__ import annotations

from editdecay.errors import ConfigError


def parse_layer_list(text: str, what: str = "--layers") -> list[int]:
    """'4,5,6' or '4-8' or '4-6,9' -> sorted unique ints; a ConfigError names ``what`` and the bad part."""
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo or lo < 0:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                value = int(part)
                if value < 0:
                    raise ValueError
                out.add(value)
        except ValueError:
            raise ConfigError(
                f"{what}: '{part}' is not a layer index or range (use e.g. 4,5,6 or 4-8)"
            ) from None
    if not out:
        raise ConfigError(f"{what}: no layer given in {text!r}")
    return sorted(out)
