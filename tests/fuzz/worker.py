"""Worker subprocess: runs cases [start, stop) of a seed and reports one JSON line per event.

    python -m tests.fuzz.worker --seed S --start A --stop B [--ops V2,V4,...]

Before each case it prints {"start": i}; after it, the verdict. If the process dies the
pool knows which case killed it from the last "start" line.
"""

import argparse
import json
import os
import sys
import warnings


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--stop", type=int, required=True)
    parser.add_argument("--ops", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.simplefilter("ignore")
    from . import cases

    kwargs = {"ops": tuple(args.ops.split(","))} if args.ops else {}
    # Test hook: the suite's own test proves a dying worker is caught and reported.
    crash_at = {int(v) for v in os.environ.get("QDQ_FUZZ_CRASH_AT", "").split(",") if v}
    execute = None
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for i in range(args.start, args.stop):
        print(json.dumps({"start": i}), file=out, flush=True)
        if i in crash_at:
            os.abort()
        if execute is None:
            from . import execute  # TensorFlow loads here, after the environment is set
        case = cases.generate(args.seed, i, **kwargs)
        verdict = execute.run_case(case)
        record = {"i": i, "status": verdict["status"], "kind": verdict.get("kind"), "op": case.op,
                  "mode": case.mode}
        if verdict.get("denormal_modes"):
            record["denormal_modes"] = True
        if verdict["status"] != "pass":
            record.update(verdict)
            record["summary"] = case.summary()
            record["fingerprint"] = cases.fingerprint(case)
        print(json.dumps(record, default=str), file=out, flush=True)
    print(json.dumps({"end": True}), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
