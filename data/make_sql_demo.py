"""Generate the demo task: English questions -> SQL over one tiny table, in chat format.

The task is narrow on purpose: a 135M instruct model knows some SQL but not this table, these
column names or the one canonical query shape we grade by exact match, so the base model
scores near zero while a few minutes of LoRA training learns it.

    python data/make_sql_demo.py    # rewrites data/sql_demo/{train,test,intent_train,intent_test}.jsonl

``intent_*.jsonl`` hold the same questions as ``text``/``label`` rows (label: the query shape,
one of the eight intents) for the sequence-classification example.

Every question comes from one of eight templates with a few phrasings each; slot values are
drawn at random (seeded), and no (template, phrasing, values) triple appears in both splits.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = (
    "Translate the question into one SQLite query over the table "
    "employees(id, name, department, salary, city, hire_year). Reply with the query only."
)
DEPARTMENTS = ["Sales", "Engineering", "Marketing", "Finance", "Support", "Legal", "HR", "Operations"]
CITIES = ["Berlin", "Paris", "London", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Dublin", "Prague"]
SALARIES = list(range(30000, 150001, 5000))
YEARS = list(range(2008, 2025))

# (intent, phrasings, query); slots: {dept} {city} {n} {year}
TEMPLATES = [
    (
        "list_by_department",
        ["List the names of employees in the {dept} department.",
         "Who works in {dept}?",
         "Give me everyone in the {dept} department."],
        "SELECT name FROM employees WHERE department = '{dept}';",
    ),
    (
        "count_by_city",
        ["How many employees work in {city}?",
         "Count the employees based in {city}.",
         "What is the number of staff in {city}?"],
        "SELECT COUNT(*) FROM employees WHERE city = '{city}';",
    ),
    (
        "list_salary_above",
        ["Which employees earn more than {n}?",
         "Who has a salary above {n}?",
         "List employees paid over {n}."],
        "SELECT name FROM employees WHERE salary > {n};",
    ),
    (
        "avg_salary_by_department",
        ["What is the average salary in the {dept} department?",
         "Average pay in {dept}?",
         "Compute the mean salary of {dept} employees."],
        "SELECT AVG(salary) FROM employees WHERE department = '{dept}';",
    ),
    (
        "list_hired_in_year",
        ["Who was hired in {year}?",
         "List the employees who joined in {year}.",
         "Which people were hired during {year}?"],
        "SELECT name FROM employees WHERE hire_year = {year};",
    ),
    (
        "count_department_salary_below",
        ["How many employees in {dept} earn less than {n}?",
         "Count {dept} staff with a salary below {n}.",
         "Number of people in {dept} paid under {n}?"],
        "SELECT COUNT(*) FROM employees WHERE department = '{dept}' AND salary < {n};",
    ),
    (
        "max_salary_by_city",
        ["What is the highest salary in {city}?",
         "Top salary among employees in {city}?",
         "Find the maximum pay in {city}."],
        "SELECT MAX(salary) FROM employees WHERE city = '{city}';",
    ),
    (
        "list_city_hired_after_by_salary",
        ["List employees in {city} hired after {year}, highest paid first.",
         "Who in {city} joined after {year}? Sort by salary, descending.",
         "Show {city} employees hired after {year} ordered by salary from high to low."],
        "SELECT name FROM employees WHERE city = '{city}' AND hire_year > {year} "
        "ORDER BY salary DESC;",
    ),
]


def _example(rng: random.Random) -> tuple[tuple, dict]:
    index = rng.randrange(len(TEMPLATES))
    intent, phrasings, query = TEMPLATES[index]
    slots = {"dept": rng.choice(DEPARTMENTS), "city": rng.choice(CITIES),
             "n": rng.choice(SALARIES), "year": rng.choice(YEARS)}
    phrasing = rng.randrange(len(phrasings))
    used = tuple(sorted((k, v) for k, v in slots.items() if "{" + k + "}" in query))
    # The key includes the phrasing: the one-slot templates have too few values (8 departments)
    # to keep their queries out of the test split entirely.
    question = phrasings[phrasing].format(**slots)
    row = {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": query.format(**slots)},
    ], "intent": intent}
    return (index, phrasing, used), row


def generate(n_train: int = 400, n_test: int = 50, seed: int = 1234) -> tuple[list, list]:
    """Return (train, test) rows with disjoint (template, slot values) keys."""
    rng = random.Random(seed)
    seen: set = set()
    splits: list[list] = [[], []]
    for split, size in ((1, n_test), (0, n_train)):  # test first, so train avoids its keys
        while len(splits[split]) < size:
            key, row = _example(rng)
            if key in seen:
                continue
            seen.add(key)
            splits[split].append(row)
    return splits[0], splits[1]


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    out = Path(__file__).parent / "sql_demo"
    out.mkdir(exist_ok=True)
    for name, rows in zip(("train", "test"), generate()):
        _write(out / f"{name}.jsonl", [{"messages": r["messages"]} for r in rows])
        # The same questions as a classification task (seq_cls): which query shape is asked for.
        _write(out / f"intent_{name}.jsonl",
               [{"text": r["messages"][1]["content"], "label": r["intent"]} for r in rows])


if __name__ == "__main__":
    main()
