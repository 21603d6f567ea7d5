"""One-line error messages shared by every layer (lowest layer: imports nothing of the package)."""

from __future__ import annotations

__all__ = ["validation_problems"]


def validation_problems(exc: Exception, root: str) -> str:
    """A pydantic ``ValidationError`` as one line: ``"loc.path: message; other.loc: message"``.

    Args:
        exc: the error; one without pydantic's ``errors()`` (a plain ``ValueError``) gives ``str(exc)``.
        root: the name shown for an error about the whole document (an empty location), e.g. ``"config"``.
    """
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or root}: {e['msg']}" for e in errors())
