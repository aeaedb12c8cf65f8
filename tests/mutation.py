"""Sampled mutation testing of the core modules with mutmut (`make mutation`; see docs/testing.md).

mutmut (configured in pyproject.toml, `[tool.mutmut]`) generates every mutant of the core modules into
`mutants/`. Running all of them takes hours on 2 cores, so this script runs a fixed sample: the mutants
with the smallest BLAKE2b hash of their names, `--fraction` of each module but at least `--minimum` (the
same mutants every time), then prints per module the
killed / tried count and every survivor. Timeouts count as killed (the mutant made a test hang).

Not a test module (pytest collects `test_*.py` only). Usage, from the repository root:
    python tests/mutation.py [--fraction 0.03] [--minimum 10] [--jobs 2] [--module lmforge.data.split]
                             [--report]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 152, 255}  # mutmut's exit codes for "killed" and "timeout"
SURVIVED = {0}


def sample(names: list[str], fraction: float, minimum: int) -> list[str]:
    """The `fraction` of the names (at least `minimum`) with the smallest BLAKE2b hash."""
    ranked = sorted(names, key=lambda name: hashlib.blake2b(name.encode(), digest_size=8).digest())
    return ranked[: max(math.ceil(fraction * len(names)), minimum)]


def mutants_by_module() -> dict[str, dict[str, int | None]]:
    """module name -> {mutant name: mutmut exit code, None if not run yet}, from mutants/**/*.meta."""
    modules = {}
    for meta in sorted(Path("mutants/src").rglob("*.py.meta")):
        module = ".".join(meta.relative_to("mutants/src").with_suffix("").with_suffix("").parts)
        modules[module] = json.loads(meta.read_text())["exit_code_by_key"]
    return modules


def mutmut(jobs: int, names: list[str]) -> None:
    mutmut_exe = Path(sys.executable).with_name("mutmut")
    subprocess.run([str(mutmut_exe), "run", "--max-children", str(jobs), *names], check=False)


def report(fraction: float, minimum: int, modules: list[str]) -> bool:
    """Print the score of the sampled mutants per module; False if any sampled mutant has not run."""
    complete = True
    print(f"{'module':<32} {'sampled':>7} {'killed':>6} {'survived':>8} {'score':>6}")
    survivors = []
    for module, codes in mutants_by_module().items():
        if modules and module not in modules:
            continue
        picked = {n: codes[n] for n in sample(list(codes), fraction, minimum)}
        killed = sum(c in KILLED for c in picked.values())
        survived = [n for n, c in picked.items() if c in SURVIVED]
        other = [n for n, c in picked.items() if c not in KILLED | SURVIVED]
        complete &= all(c is not None for c in picked.values())
        tried = killed + len(survived)
        score = f"{100 * killed / tried:.0f}%" if tried else "-"
        note = f"  ({len(other)} not run or no test)" if other else ""
        print(f"{module:<32} {len(picked):>7} {killed:>6} {len(survived):>8} {score:>6}{note}")
        survivors += survived + [f"{n} (exit {picked[n]})" for n in other]
    if survivors:
        print("\nsurvivors (see each with `mutmut show NAME`):")
        print("\n".join(f"  {name}" for name in survivors))
    return complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.03, help="share of each module's mutants to run")
    parser.add_argument("--minimum", type=int, default=10, help="but at least this many per module")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel")
    parser.add_argument("--module", action="append", default=[], help="only this module (repeatable)")
    parser.add_argument("--report", action="store_true", help="only print the scores of the last run")
    args = parser.parse_args()
    if not args.report:
        if not Path("mutants/src").exists():
            # Generates every mutant and the test coverage map, then runs the mutants of one small function.
            mutmut(args.jobs, ["lmforge.data.split.x_check_fractions__mutmut_1"])
        # One mutmut call for the whole sample: it re-runs the clean tests (and, after a test file changed,
        # the coverage map) once per call. Fast mutants (fewest covering tests) run first.
        names = [
            name
            for module, codes in mutants_by_module().items()
            if not args.module or module in args.module
            for name in sample(list(codes), args.fraction, args.minimum)
        ]
        print(f"-- {len(names)} sampled mutants", flush=True)
        mutmut(args.jobs, names)
    sys.exit(0 if report(args.fraction, args.minimum, args.module) else 1)


if __name__ == "__main__":
    main()
