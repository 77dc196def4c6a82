"""Runs inside bench/.work/snsql-venv (SmartNoise SQL pins its own OpenDP and pandas).

Reads the same Parquet files, removes the same opted-out people the gateway removes, and runs
the same grouped distinct-person count through SmartNoise SQL's pandas reader. Prints JSON.

    bench/.work/snsql-venv/bin/python bench/smartnoise_helper.py DATA_DIR ROUNDS MAX_IDS EPSILON
"""

import json
import sys
import time

import pandas as pd
import snsql
from snsql import Privacy

SQL = ("SELECT snomed_code, COUNT(DISTINCT person_id) AS people FROM gp.gp_events "
       "GROUP BY snomed_code")


def main() -> None:
    data, rounds, max_ids, epsilon = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(
        sys.argv[4])
    t0 = time.perf_counter()
    events = pd.read_parquet(f"{data}/gp_events.parquet", columns=["person_id", "snomed_code"])
    opted = set(pd.read_parquet(f"{data}/opt_outs.parquet", columns=["person_id"])["person_id"])
    events = events[~events["person_id"].isin(opted)].reset_index(drop=True)
    load_s = time.perf_counter() - t0
    metadata = {"gp": {"gp": {"gp_events": {
        "row_privacy": False, "max_ids": max_ids, "rows": len(events),
        "person_id": {"type": "int", "private_id": True},
        "snomed_code": {"type": "string"},
    }}}}
    privacy = Privacy(epsilon=epsilon, delta=1e-8)
    timings, answers = [], []
    for _ in range(rounds):
        reader = snsql.from_df(events, privacy=privacy, metadata=metadata)
        t0 = time.perf_counter()
        result = reader.execute(SQL)
        timings.append(time.perf_counter() - t0)
        answers.append({str(r[0]): r[1] for r in result[1:]})
    print(json.dumps({"load_s": load_s, "timings": timings, "answers": answers,
                      "rows": len(events), "version": snsql.__version__
                      if hasattr(snsql, "__version__") else "?"}))


if __name__ == "__main__":
    main()
