"""``python -m loadtests run …`` (a headless locust run with thresholds), ``soak …`` (a bounded soak) or ``bench …``."""

import sys

USAGE = """usage: python -m loadtests {run,soak,bench,hostile,ab} [options]

  run      headless locust run against seqserve, summary and thresholds (loadtests/runner.py)
  soak     a bounded soak before shipping: failures, p99 per minute, worker memory growth (loadtests/soak.py)
  bench    seqserve next to the model's own speed and other servers (loadtests/bench.py)
  hostile  hostile and careless clients, overload, /livez under saturation (loadtests/hostile.py)
  ab       throughput of two server set-ups (checkouts or settings), in turns (loadtests/ab.py)

`python -m loadtests run --help` (or soak, bench) lists a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "run":
        from loadtests.runner import main as run

        return run(rest)
    if command == "soak":
        from loadtests.soak import main as soak

        return soak(rest)
    if command == "bench":
        try:
            from loadtests.bench import main as bench
        except ModuleNotFoundError as err:
            if err.name != "loadtests.bench":
                raise
            print("python -m loadtests bench: not built yet (loadtests/bench.py is missing)", file=sys.stderr)
            return 2
        return bench(rest)
    if command == "hostile":
        from loadtests.hostile import main as hostile

        return hostile(rest)
    if command == "ab":
        from loadtests.ab import main as ab

        return ab(rest)
    print(USAGE, file=sys.stderr if command not in ("-h", "--help") else sys.stdout)
    return 0 if command in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
