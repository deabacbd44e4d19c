"""JSON as this project writes it: readable UTF-8 (Chinese text stays Chinese), and never unwritable.

A file name whose bytes are not UTF-8 (`b"caf\\xe9.wav"` from a Latin-1 system) reaches Python as a string with
lone surrogates (os.fsdecode's surrogateescape: "caf\\udce9.wav"). json.dumps(ensure_ascii=False) keeps them as
they are, and writing that text as UTF-8 raised UnicodeEncodeError: one such file name ended every row's write
(results.jsonl, the manifest, the summary) of a whole run. Here each lone surrogate is written as its JSON escape
("\\udce9"): the file stays valid UTF-8, and json.loads gives back the same string, so a `source` read from the
results still opens the same file (pathlib encodes it back with surrogateescape).
"""

from __future__ import annotations

import json
import re
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(obj: Any, **options: Any) -> str:
    """json.dumps(obj, ensure_ascii=False, **options), with lone surrogates escaped (they can only stand inside a
    JSON string, where an escape means the same character)."""
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False, **options))
