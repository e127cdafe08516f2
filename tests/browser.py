"""Headless Chromium for the page tests: a screenshot or the DOM after scripts ran, and every request the page made.

Chromium's own background services (updates, sign-in) also show up in its net log; a page's requests are told
apart by their network isolation key, which names the page's `file://` origin. Host resolution is mapped to
nothing, so even a request that slips through reaches no one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND"]


@dataclass(frozen=True)
class Rendered:
    requests: list[str]  # URLs the page asked for beyond file: and data:
    dom: str = ""


def page_requests(net_log: Path) -> list[str]:
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and str(params.get("network_isolation_key", "")).startswith("file://"):
            url = params.get("url", "")
            if not url.startswith(("file:", "data:")):
                urls.append(url)
    return urls


def render(page: Path, screenshot: Path | None = None, size: tuple[int, int] = (1280, 2000),
           dump_dom: bool = False) -> Rendered:
    """Open `page` (a local file); write a PNG to `screenshot` or return the DOM; report the page's requests."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        net_log = Path(tmp) / "net.json"
        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp}/profile", f"--log-net-log={net_log}",
               f"--window-size={size[0]},{size[1]}"]
        # Virtual time lets the page's scripts finish (bootstrap-table builds its tables) before the capture.
        cmd += ["--virtual-time-budget=5000", "--dump-dom"] if dump_dom else [f"--screenshot={screenshot}"]
        out = subprocess.run([*cmd, page.resolve().as_uri()], capture_output=True, text=True, timeout=180, check=True)
        return Rendered(page_requests(net_log), out.stdout if dump_dom else "")
