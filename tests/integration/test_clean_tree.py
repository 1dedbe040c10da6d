"""A test run changes no tracked file of the checkout it runs in.

The browser story (tests/browser/test_ui_story.py) takes the README's screenshots; in a test run they go to
build/screenshots (ignored by git), and only 'scripts/screenshots' (SAFEHOLD_SCREENSHOTS=docs/screenshots)
refreshes docs/screenshots.  This runs the story in a pytest of its own and compares the checkout's
'git status --porcelain' before and after.  Like the browser tests it needs /usr/bin/chromium: skipped
without it, unless CI is set (CI must run it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser.conftest import CHROMIUM

ROOT = Path(__file__).resolve().parents[2]
STORY = ROOT / "tests" / "browser" / "test_ui_story.py"
SHOTS = ROOT / "build" / "screenshots"

pytestmark = pytest.mark.browser


def checkout_root() -> Path | None:
    """The top of the git checkout these tests run from (None: not a git checkout, or no git)."""
    if shutil.which("git") is None:
        return None
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return Path(found.stdout.strip()) if found.returncode == 0 else None


def git_status(root: Path) -> list[str]:
    """Every changed, added, deleted or untracked (not ignored) path, as 'git status --porcelain' lists them."""
    status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True, check=True)
    return sorted(status.stdout.splitlines())


@pytest.mark.timeout(900)
def test_the_browser_story_changes_no_tracked_file() -> None:
    root = checkout_root()
    if root is None:
        pytest.skip("not a git checkout (or git is missing): nothing to compare")
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests, but {CHROMIUM} is missing", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does it when run as root)")

    before = git_status(root)
    started = time.time()
    env = {k: v for k, v in os.environ.items() if k != "SAFEHOLD_SCREENSHOTS"}  # the default a test run uses
    story = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(STORY)], cwd=root,
                           env=env, capture_output=True, text=True, timeout=840)
    after = git_status(root)

    assert story.returncode == 0 and " passed" in story.stdout, \
        f"the browser story failed or did not run:\n{story.stdout[-4000:]}\n{story.stderr[-2000:]}"
    changed = sorted(set(before) ^ set(after))
    assert not changed, "the browser story changed the checkout ('git status --porcelain' before ^ after):\n  " \
        + "\n  ".join(changed)
    shot = SHOTS / "vault.png"
    assert shot.exists() and shot.stat().st_mtime >= started - 1, f"the story took no screenshot into {SHOTS}"
