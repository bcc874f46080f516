"""The `autoall` command (click): `study run|create|status|list|export`, `report`, `train`,
`demo`, `ui` and `dashboard`. Each command parses and checks its input, then calls the
package that does the work (study, report, training); the `ui`/`dashboard` servers and their
watchdog live here too. Errors become one line and an exit code (`autoall.errors`).
"""

from __future__ import annotations

from autoall.cli._main import main

__all__ = ["main"]
