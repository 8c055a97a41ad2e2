#!/usr/bin/python3
"""The README tells the truth a new user relies on:
- one figure for the running Latent Scaling cost: `xcoderd --help` gives the
  README's measured figure (make bench, scaling_cost_fraction), not another.
Prints "ok - name" / "not ok - name: why" lines; exits non-zero on failure."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xc_integ import check, failed, run_case  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XCODERD = os.path.join(ROOT, "build", "xcoderd")
README = open(os.path.join(ROOT, "README.md")).read()


def test_scaling_cost_one_figure():
    m = re.search(r"`scaling_cost_fraction`\): ([0-9.]+)% of a reference step", README)
    check(m, "README does not state the running Latent Scaling cost")
    readme = m.group(1)
    h = subprocess.run([XCODERD, "--help"], capture_output=True, text=True, timeout=30).stdout
    line = " ".join(h[h.index("scaling_running"):].split("\n\n")[0].split())
    figures = re.findall(r"([0-9.]+)% of a step", line)
    check(figures == [readme], "xcoderd --help says %r for scaling_running, README says %s%%: %s"
          % (figures, readme, line))


def main():
    for t in (test_scaling_cost_one_figure,):
        run_case(t)
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
