# Two commands matter: `make demo` runs the pipeline on the local stack, `make test` passes the tests.
# Everything generated lives in .state/ (gitignored).

SHELL := /bin/bash
STATE := $(CURDIR)/.state
VENV := $(STATE)/venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed-$(shell cat requirements.txt constraints.txt | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help system-deps install up down status demo test test-unit airflow bench clean

help:
	@echo "make demo   - install, start the local stack, run the pipeline end to end, print a report"
	@echo "make test   - install, start the local stack, run every test (unit, integration, e2e)"
	@echo "make up | down | status | airflow | bench"

# Debian packages the stack needs: PostgreSQL server, Java for Kafka/Elasticsearch/Spark, Maven to fetch them,
# docker-compose to validate the production compose file (no Docker engine is needed for that), Chromium and its
# driver for the browser test of the Airflow UI.
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v setpriv >/dev/null || missing="$$missing util-linux"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root (or install them yourself):$$missing"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(INSTALLED): requirements.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -c "import pyspark, airflow, elasticsearch; print('pyspark', pyspark.__version__, 'airflow', airflow.__version__)"
	rm -f $(VENV)/.installed-*
	touch $@

install: system-deps $(INSTALLED)

up: install
	$(PY) -m stack up

down:
	$(PY) -m stack down

status:
	$(PY) -m stack status

demo: up
	$(PY) -m stack.demo
	$(PY) -m stack status

test: up
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

# Airflow's UI, scheduler, DAG processor and triggerer in the background, on loopback; prints URL and login. Its DAGs
# are created unpaused: the pipeline runs by itself (README, "Airflow").
airflow: up
	$(PY) -m stack airflow-ui

bench: up
	$(PY) -m bench $(BENCH_ARGS)

clean: down
	rm -rf $(STATE)
