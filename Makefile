# The two commands of the README:  `make demo` (main job) and `make test` (whole suite).
VENV      := .venv
LRS       := $(VENV)/bin/lrs-focus
MODEL     ?= tiny
QUESTION  ?= Where are the largest agricultural fields?
SAMPLE    := dist/sentinel2_rgb.vrt

.PHONY: setup setup-test setup-answer-server demo test plugin-zip clean

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

# vLLM for CPUs in .venv-answer: `scripts/answer_server.sh MODEL_DIR PORT` (docs/scale.md)
setup-answer-server:
	scripts/setup.sh --answer-server

# Main job: build the real Sentinel-2 sample, ask it a question, write the focused tiles as GeoJSON.
demo: setup
	$(LRS) sample sentinel2 --out $(SAMPLE)
	$(LRS) pyramid $(SAMPLE)
	$(LRS) ask $(SAMPLE) "$(QUESTION)" --model $(MODEL) --out dist/demo_focus.geojson

test: setup-test
	$(VENV)/bin/python -m pytest -q -ra

plugin-zip:
	python3 scripts/build_plugin_zip.py

clean:
	rm -rf dist build .pytest_cache
