# One entry point for every routine task: `make help` lists them.
.PHONY: help setup test lint typecheck unit bench run up

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

setup:  ## install Debian packages and the virtualenv (.venv)
	scripts/setup.sh

lint:  ## ruff
	.venv/bin/ruff check src tests bench

typecheck:  ## strict mypy on the package
	.venv/bin/mypy

unit:  ## the test suite (needs root: workloads run as per-instance uids)
	.venv/bin/pytest -q -p no:cacheprovider

test: setup lint typecheck unit  ## set up, then lint, typecheck and run every test

bench:  ## the benchmarks (figures and ratios against same-run baselines)
	bench/run_all.sh

up:  ## set up, then run the all-in-one control plane (gameplane up)
	scripts/setup.sh
	.venv/bin/gameplane up

run:  ## set up, then run a single agent serving the freeciv template
	scripts/run-agent.sh
