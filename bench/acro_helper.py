"""Run by ACRO's own virtualenv (see acro_agreement.py): ACRO's dominance verdicts per cell.

Reads tables as JSON on stdin, writes verdicts as JSON on stdout. Not imported by the project.
"""

import json
import logging
import sys

import acro
import pandas as pd

logging.disable(logging.CRITICAL)
out = []
for table in json.load(sys.stdin):
    df = pd.DataFrame(table["records"], columns=["a", "b", "v"])
    session = acro.ACRO(suppress=False)
    tab = session.crosstab(df.a, df.b, values=df.v, aggfunc="sum")
    cells = list(session.results.results.values())[-1].sdc["cells"]
    rows, cols = list(tab.index), list(tab.columns)

    def labels(check, rows=rows, cols=cols, cells=cells):
        return sorted([rows[r], cols[c]] for r, c in cells.get(check, []))

    out.append({"nk": labels("NKCheck"), "p": labels("PPercentCheck")})
json.dump(out, sys.stdout)
