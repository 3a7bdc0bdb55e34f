"""Capture the quickstart report in headless Chromium as one PNG (``docs/quickstart-report.png``).

The page is rendered at ``--width`` CSS pixels in a tall window, the blank bottom is cropped
and the colours are quantised to a palette so the committed file stays small.

Usage::

    lensml quickstart --out lensml-quickstart
    python benchmarks/report_screenshot.py lensml-quickstart/report.html docs/quickstart-report.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("error: no chromium / chrome executable on PATH")


def capture(html: Path, out: Path, width: int = 1050, height: int = 16000) -> Path:
    """Render ``html`` and write the cropped, palette PNG to ``out`` (atomically)."""
    import numpy as np
    from PIL import Image

    if not html.is_file():
        raise SystemExit(f"error: {html}: no such report (run `lensml quickstart` first)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--window-size={width},{height}", f"--screenshot={raw}",
               html.resolve().as_uri()]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        img = Image.open(raw).convert("RGB")
        arr = np.asarray(img)
        rows = np.nonzero((arr != arr[-1, :, :]).any(axis=(1, 2)))[0]
        bottom = int(rows[-1]) + 24 if rows.size else arr.shape[0]
        img = img.crop((0, 0, arr.shape[1], min(bottom, arr.shape[0])))
        pal = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_suffix(".tmp.png")
        pal.save(tmp_out, optimize=True)
        tmp_out.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path, help="report.html written by lensml quickstart")
    p.add_argument("out", type=Path, help="PNG to write")
    p.add_argument("--width", type=int, default=1050, help="page width, CSS pixels")
    p.add_argument("--height", type=int, default=16000, help="window height before cropping")
    args = p.parse_args(argv)
    path = capture(args.html, args.out, args.width, args.height)
    from PIL import Image

    print(f"{path}: {Image.open(path).size[0]}×{Image.open(path).size[1]} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
