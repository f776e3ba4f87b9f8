"""Debian's chromium and chromium-driver, driven by selenium: find them or install them.

Used by the stats page test and ``tools/screenshot_stats_page.py``. ``ensure_chromium``
installs the two packages with apt-get when they are missing and this is root on a
Debian-like system (the test machine's case; ``.ci/run`` does the same), and otherwise
returns the reason they are not there, for the test to skip with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
#: apt-get update and install may take minutes on a cold cache.
INSTALL_TIMEOUT_SECONDS = 600


def ensure_chromium() -> str | None:
    """None when chromium and its driver are there (installed now if need be); else why not."""
    if shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER):
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "chromium and chromium-driver are missing (apt-get install chromium chromium-driver)"
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
    ):
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS
        )
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr.strip()[-300:]}"
    if shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER):
        return None
    return "apt-get installed chromium, but chromium or chromedriver is not on PATH"


def start_browser(width: int = 1200, height: int = 900) -> Any:
    """A headless chromium under selenium, keeping the page's console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which(CHROMEDRIVER) or CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)
