"""A fresh headless Chromium, as a new user has: the text a page shows once its scripts ran,
and screenshots. Tests that need one skip where no Chromium is installed (``.ci/run``
installs it when it can)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["browser", "page_text", "screenshot"]

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
          "--window-size=1600,1000", "--hide-scrollbars")


def browser() -> str | None:
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(url: str, *extra: str, wait_ms: int) -> str:
    exe = browser()
    if exe is None:
        raise RuntimeError("no Chromium installed")
    with tempfile.TemporaryDirectory(prefix="emerge-browser-") as profile:  # a fresh profile
        out = subprocess.run([exe, *_FLAGS, f"--user-data-dir={profile}",
                              f"--virtual-time-budget={wait_ms}", *extra, url],
                             capture_output=True, text=True, timeout=180)
    return out.stdout


def page_text(url: str, wait_ms: int = 30_000) -> str:
    """The visible text of ``url`` after ``wait_ms`` of (virtual) time, whitespace folded."""
    html = _run(url, "--dump-dom", wait_ms=wait_ms)
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()


def screenshot(url: str, path: Path, wait_ms: int = 30_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(url, f"--screenshot={path}", wait_ms=wait_ms)
    if not path.exists():
        raise RuntimeError(f"Chromium wrote no screenshot of {url}")
    return path
