"""A myst-nb MIME render plugin that renders the evidence records of ``mlmc.evidence.show`` as nothing (every chapter).

The records (``application/vnd.mlmc.evidence+json``) ride along with the visible table so that ``mlmc build`` can
collect them into the what-reproduced page; without this plugin myst-nb warns about an unknown MIME type, which fails
the strict build. Registered under the ``myst_nb.mime_renderers`` entry point in ``pyproject.toml``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from mlmc.evidence import MIME


class EvidenceRecords:
    """Hide :data:`mlmc.evidence.MIME` outputs in every builder; leave all other MIME types to myst-nb."""

    mime_priority_overrides: ClassVar[list[tuple[str, str, int | None]]] = [("*", MIME, None)]

    @staticmethod
    def handle_mime(renderer: Any, data: Any, inline: bool) -> list | None:
        return [] if data.mime_type == MIME else None
