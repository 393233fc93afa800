"""Command line of the fuzz suite.

    python -m tests.fuzz --cases 20000 --seed 1 [--workers 2]   # fixed budget
    python -m tests.fuzz --long --minutes 60 --seed 7            # batches until time is up
    python -m tests.fuzz --repro 7:12345                         # one case, in-process, verbose

Exit status 0 only when no case crashed, hung, or gave a wrong answer or error.
"""

import argparse
import json
import os
import signal
import sys
import time
import warnings


def _repro(spec, ops):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.simplefilter("ignore")
    import numpy as np

    from . import cases, execute, oracle

    seed, index = (int(p) for p in spec.split(":"))
    case = cases.generate(seed, index, **({"ops": ops} if ops else {}))
    print("case:", case.summary())
    print("fingerprint:", cases.fingerprint(case))
    with np.printoptions(threshold=40, edgeitems=5):
        print("input:", repr(case.x))
        print("input_min:", repr(case.min_value), "input_max:", repr(case.max_value))
        if case.grad is not None:
            print("gradients:", repr(case.grad))
        for o in oracle.expect(case):
            print("expected:", f"error naming one of {o.error}" if not o.ok else o.outputs)
        verdict = execute.run_case(case)
    print("verdict:", json.dumps(verdict, default=str, indent=1))
    return 0 if verdict["status"] == "pass" else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--cases", type=int, default=None, help="fixed number of cases")
    parser.add_argument("--long", action="store_true", help="run batches until --minutes have passed")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--first", type=int, default=0, help="index of the first case")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2000, help="cases per worker process")
    parser.add_argument("--ops", default="", help="comma-separated subset of ops (default: all)")
    parser.add_argument("--json", default=None, help="write the full report here")
    parser.add_argument("--repro", default=None, metavar="SEED:INDEX", help="re-run one case in-process")
    args = parser.parse_args(argv)
    ops = tuple(args.ops.split(",")) if args.ops else None
    if args.repro:
        return _repro(args.repro, ops)
    if not args.long and args.cases is None:
        parser.error("give --cases N or --long --minutes M")

    from . import pool

    def stop(signum, frame):
        pool.STOP.set()  # finish quietly: kill the workers, print and save what ran

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def progress(report, seconds):
        print(f"[fuzz] seed {report.seed}: {report.cases} cases in {seconds:.0f} s, "
              f"{len(report.failures)} failures, {len(report.crashes)} crashes", file=sys.stderr, flush=True)

    report = pool.run(args.seed, count=None if args.long else args.cases, minutes=args.minutes if args.long else None,
                      workers=args.workers, batch=args.batch, ops=ops, progress=progress, first=args.first)
    data = report.to_json()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1, default=str)
    for entry in report.crashes + report.failures:
        print(json.dumps(entry, default=str, indent=1))
    print(f"seed {report.seed}: {report.cases} cases ({report.passed_ok} results, {report.passed_error} errors "
          f"checked; {report.denormal_modes} needed the denormal-mode alternative) in {report.seconds} s; "
          f"{len(report.failures)} wrong, {len(report.crashes)} crashed/hung, {report.restarts} worker restarts")
    print("by op:", dict(sorted(report.by_op.items())), "by mode:", dict(sorted(report.by_mode.items())))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
