# Every target builds .venv from nothing first, so a fresh clone needs only Python 3.11.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo demo-foundation demo-control test docs bench pretrain clean

$(STAMP): pyproject.toml requirements.lock
	python3.11 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test,docs]'
	touch $(STAMP)

# every stage, the report included
demo: $(STAMP)
	.venv/bin/raymem study studies/demo_localise.yaml

# the quick path: PreCog and fine-tuning
demo-foundation: $(STAMP)
	.venv/bin/raymem study studies/demo.yaml

# the control setup with 12 runs per technique (docs/localisation.md)
demo-control: $(STAMP)
	.venv/bin/raymem study studies/control.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# the documentation site, offline, into site/ (broken links fail it)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/precog_throughput.py

pretrain: $(STAMP)
	.venv/bin/raymem pretrain --out raymem/assets/raymem-mini

clean:
	rm -rf .venv results site
