"""Fuzz suite: random calls of every op and wrapper judged against a float64 reference model,
run in worker subprocesses so aborts and segfaults are caught and reported with a reproducer.

    python -m tests.fuzz --cases 20000 --seed 1      # a fixed budget
    python -m tests.fuzz --long --minutes 60          # for as long as asked
    python -m tests.fuzz --repro SEED:INDEX           # re-run one case in-process
"""
