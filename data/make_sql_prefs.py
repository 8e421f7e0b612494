"""Preference pairs for the SQL demo: chosen = the correct query, rejected = a plausible wrong one.

    python data/make_sql_prefs.py   # writes data/sql_demo/prefs_{train,test}.jsonl from {train,test}.jsonl

Each row is TRL's conversational preference format with an explicit prompt:
``{"prompt": [system, user], "chosen": [assistant], "rejected": [assistant]}``. The rejected
query is the correct one with one mistake of the kinds a small model makes, drawn at random
(seeded) among those that apply: a flipped comparison, the wrong aggregate, the wrong column,
a dropped condition, the wrong sort order, a wrong literal, or a misnamed table/column.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

CITIES = ["Berlin", "Paris", "London", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Dublin", "Prague"]
DEPARTMENTS = ["Sales", "Engineering", "Marketing", "Finance", "Support", "Legal", "HR", "Operations"]


def _other(rng: random.Random, value: str, pool: list[str]) -> str:
    return rng.choice([v for v in pool if v != value])


def mistakes(query: str, rng: random.Random) -> list[str]:
    """Every wrong variant of ``query`` this module knows (each differs from ``query``)."""
    out = []
    if " > " in query or " < " in query:
        out.append(query.replace(" > ", " @ ").replace(" < ", " > ").replace(" @ ", " < "))
    for good, bad in (("AVG(", "SUM("), ("MAX(", "MIN("), ("COUNT(*)", "name")):
        if good in query:
            out.append(query.replace(good, bad))
    if "department = " in query:
        out.append(query.replace("department = ", "city = "))
    if "city = " in query:
        out.append(query.replace("city = ", "department = "))
    if " AND " in query:
        out.append(re.sub(r" AND [^;]*?(?= ORDER BY|;)", "", query))
    if " DESC" in query:
        out.append(query.replace(" DESC", " ASC"))
    city = re.search(r"city = '(\w+)'", query)
    if city:
        out.append(query.replace(city.group(1), _other(rng, city.group(1), CITIES)))
    dept = re.search(r"department = '(\w+)'", query)
    if dept:
        out.append(query.replace(dept.group(1), _other(rng, dept.group(1), DEPARTMENTS)))
    number = re.search(r"(salary|hire_year) [<>=] (\d+)", query)
    if number:
        value = int(number.group(2))
        step = 5000 if number.group(1) == "salary" else 1
        out.append(query.replace(number.group(2), str(value + rng.choice([-2, -1, 1, 2]) * step), 1))
    out.append(query.replace("FROM employees", "FROM employee"))
    if "hire_year" in query:
        out.append(query.replace("hire_year", "hire_date"))
    return [q for q in out if q != query]


def pairs(rows: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for row in rows:
        *prompt, answer = row["messages"]
        wrong = rng.choice(mistakes(answer["content"], rng))
        out.append({"prompt": prompt, "chosen": [answer],
                    "rejected": [{"role": "assistant", "content": wrong}]})
    return out


def main() -> None:
    folder = Path(__file__).parent / "sql_demo"
    for split, seed in (("train", 7), ("test", 8)):
        rows = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
        path = folder / f"prefs_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in pairs(rows, seed)))
        print(f"wrote {len(rows)} pairs to {path}")


if __name__ == "__main__":
    main()
