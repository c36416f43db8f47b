"""Fuzz the feature-pickle loader in a child under a memory cap (tests/pickle_fuzz.py).

A child, so that a memory-unsafe load is a segfault of the child rather than of pytest, and
so that its address space can be capped (1 GiB above its size after imports) without
touching pytest's. numpy RuntimeWarnings are errors there: bad values must be reported as a
DataError, not warned about. About 1000 inputs: a few seconds of loads; `CASD_FUZZ_EXAMPLES` sets more
for a longer local campaign.
"""
import os
import textwrap

from test_data_hostile import CHILD_PRELUDE, run_child

FUZZ = CHILD_PRELUDE + textwrap.dedent("""
    sys.path.insert(0, "tests")
    import pickle_fuzz  # imports hypothesis and builds the seed files before the cap
    cap_memory(1 << 30)
    import warnings
    warnings.simplefilter("error", RuntimeWarning)  # bad values are reported, not warned about
    pickle_fuzz.run(int(sys.argv[1]))
""")


def test_fuzzed_pickles_load_or_raise_data_error():
    examples = int(os.environ.get("CASD_FUZZ_EXAMPLES", "1000"))
    child = run_child(FUZZ, str(examples), timeout=max(600, examples // 5))  # ~40 inputs a second when idle
    assert child.returncode == 0, f"exit {child.returncode} (-11 is a segfault)\n{child.stdout}\n{child.stderr[-6000:]}"
    assert child.stdout.split() == ["mutated:", "ok", "opcodes:", "ok", "random_bytes:", "ok"], child.stdout
