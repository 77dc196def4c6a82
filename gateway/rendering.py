"""How answers become bytes, for text that is not valid Unicode.

JSON lets a client send a lone surrogate (``"\\ud800"``); Python keeps it in the ``str``, the
audit trail stores it as an escape, and it comes back in audit searches, kept results and
error messages that quote the input. Encoding such a string as UTF-8 fails, so without this a
single hostile request made every later audit page that held it a 500. Answers render as
before; only one that cannot be UTF-8 is written with ASCII escapes (``\\ud800``), which is
still JSON and reads back as the same string.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse as _JSONResponse


class JSONResponse(_JSONResponse):
    """Starlette's JSONResponse, falling back to ASCII escapes where UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("ascii")


def utf8_text(text: str) -> bytes:
    """Plain text (the audit CSV) as UTF-8, a lone surrogate written as its escape."""
    return text.encode("utf-8", errors="backslashreplace")
