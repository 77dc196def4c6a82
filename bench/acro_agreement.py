"""Do our dominance verdicts agree with ACRO's? 200+ random tables, cell by cell.

ACRO pins its own pandas and numpy, so it runs in a virtualenv of its own
(bench/.work/acro-venv, made on first run) through bench/acro_helper.py.

    .venv/bin/python bench/acro_agreement.py [--tables 200] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from gateway.disclosure.threshold import Dominance

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".work" / "acro-venv"


def acro_python() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"making {VENV} with acro (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "acro==1.0.2"], check=True)
    return py


def random_tables(n: int, seed: int) -> list[dict]:
    """One record per person. Values lognormal, with giants, ties and tiny cells mixed in, so
    that every side of both rules is exercised."""
    rng = np.random.default_rng(seed)
    tables = []
    for _ in range(n):
        na, nb, size = rng.integers(2, 5), rng.integers(2, 5), int(rng.integers(15, 400))
        a, b = rng.integers(0, na, size), rng.integers(0, nb, size)
        v = rng.lognormal(rng.uniform(2, 6), rng.uniform(0.2, 2.0), size)
        for _ in range(int(rng.integers(0, 4))):  # a few giants
            v[rng.integers(0, size)] *= rng.choice([5, 50, 500, 5000])
        if rng.random() < 0.2:  # ties
            v[: size // 3] = round(float(v[0]), 2)
        tables.append({"records": [[int(x), int(y), round(float(z), 4)]
                                   for x, y, z in zip(a, b, v, strict=True)]})
    return tables


def ours(table: dict, rule: Dominance) -> dict[tuple, set[str]]:
    per_cell: dict[tuple, list[float]] = {}
    for a, b, v in table["records"]:
        per_cell.setdefault((a, b), []).append(v)
    return {cell: rule.rules((sorted(vals, reverse=True)[:2], sum(vals), min(vals)))
            for cell, vals in per_cell.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    tables = random_tables(args.tables, args.seed)
    print(f"asking ACRO about {len(tables)} tables ...", flush=True)
    done = subprocess.run([str(acro_python()), str(ROOT / "acro_helper.py")],
                          input=json.dumps(tables), capture_output=True, text=True, check=True)
    theirs = json.loads(done.stdout)
    rule = Dominance()  # ACRO's defaults
    cells = agree = tables_agree = 0
    by_rule = {"NK": [0, 0], "p%": [0, 0]}  # [agree, flagged by either]
    disagreements = []
    for t, (table, acro_v) in enumerate(zip(tables, theirs, strict=True)):
        mine = ours(table, rule)
        acro_nk = {tuple(c) for c in acro_v["nk"]}
        acro_p = {tuple(c) for c in acro_v["p"]}
        all_ok = True
        for cell, broken in mine.items():
            cells += 1
            acro_set = ({"NK"} if cell in acro_nk else set()) | ({"p%"} if cell in acro_p
                                                                 else set())
            for name in by_rule:
                if (name in broken) or (name in acro_set):
                    by_rule[name][1] += 1
                    by_rule[name][0] += (name in broken) == (name in acro_set)
            same = bool(broken) == bool(acro_set) and broken == acro_set
            agree += same
            if not same:
                all_ok = False
                disagreements.append((t, cell, sorted(broken), sorted(acro_set)))
        tables_agree += all_ok
    print(f"\n{len(tables)} tables, {cells} cells (ACRO 1.0.2, its defaults: NK n=2 k=0.9, "
          "p=0.1)")
    print(f"cells with the same verdict: {agree}/{cells} ({agree / cells:.2%})")
    print(f"tables agreeing in every cell: {tables_agree}/{len(tables)}")
    for name, (ok, flagged) in by_rule.items():
        print(f"  {name:3} rule: flagged by either {flagged} times, agreeing {ok}")
    for d in disagreements[:10]:
        t, cell, mine_, theirs_ = d
        print(f"  disagreement: table {t} cell {cell} ours {mine_} acro {theirs_}")


if __name__ == "__main__":
    main()
