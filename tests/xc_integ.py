"""Helpers shared by the Python integration tests (tests/integ_*.py): checks, one
"ok - name" / "not ok - name: why" line per case (what tests/run.sh counts), and
polling with a timeout. Not a test itself."""
import sys
import time
import traceback

FAILED = 0


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def run_case(fn, width=500):
    """Runs one case; a failure is reported and counted, never hides the next case."""
    global FAILED
    try:
        fn()
        print("ok - %s" % fn.__name__, flush=True)
    except Exception as e:
        FAILED += 1
        why = ("%s: %s" % (type(e).__name__, e)).replace("\n", " ")
        print("not ok - %s: %s" % (fn.__name__, why[:width]), flush=True)
        traceback.print_exc(file=sys.stdout)


def failed():
    return FAILED


def wait_for(pred, timeout=10.0, step=0.02, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
