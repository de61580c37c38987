"""Headless chromium for the report tests: how many of a page's images really rendered."""

import re
import shutil
import subprocess

LOADED = re.compile(r'data-images="(\d+)/(\d+)"')
CHECK = ("<script>window.addEventListener('load', () => { const all = [...document.images]; "
         "document.body.setAttribute('data-images', all.filter(i => i.complete && i.naturalWidth > 0).length"
         " + '/' + all.length); });</script>")


def rendered_images(chromium: str, page) -> tuple[int, int]:
    """(images loaded, images) of ``page`` in headless chromium, read back from the rendered DOM."""
    checked = page.with_name("checked.html")
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--user-data-dir={page.with_name('chromium-profile')}",
                             "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
                             "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    match = LOADED.search(result.stdout)
    assert match, f"chromium printed no rendered DOM (exit {result.returncode}): {result.stderr[-500:]}"
    return int(match.group(1)), int(match.group(2))



def find_chromium() -> str | None:
    """The chromium executable (Debian: chromium; scripts/setup-system.sh installs it), or None."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
