# Every target only calls a script; the scripts work on a fresh machine.
.PHONY: run train test bench study setup native-checks demo-bundle
setup:
	bash scripts/setup.sh
run: setup
	bash scripts/run.sh
train: setup
	bash scripts/train.sh $(DATA)
demo-bundle: setup
	bash scripts/make_demo_bundle.sh
test: setup
	bash scripts/test.sh
bench: setup
	.venv/bin/python -m pytest benchmarks -q --benchmark-only
study: setup
	bash scripts/study.sh
native-checks: setup
	bash scripts/native_checks.sh
