# fusemount: set up, run the demo view, test, lint, benchmark.
# `make setup` is idempotent: Debian packages only when missing, the venv only when absent,
# pip only when pyproject.toml is newer than the last install.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pyfuse3 with fallocate, lseek, copy_file_range and statfs by inode (issue 14, README "The
# binding"): built from the pinned sdist plus our patch, rebuilt when either input changes.
PYFUSE3_STAMP := $(VENV)/.pyfuse3-patched
PYFUSE3_INPUTS := binding/pyfuse3-3.5.0.patch binding/build-constraints.txt scripts/build_pyfuse3.sh
# patch applies the binding's patch; qemu-utils is a test dependency (qemu-img on the view).
DEB_PACKAGES := fuse3 libfuse3-dev pkg-config patch qemu-utils
PYTEST_ARGS ?=

.PHONY: setup system-packages run test lint bench install clean distclean

setup: system-packages $(STAMP)

# pyfuse3 ships no wheel: building it needs a C compiler and Python headers too, and a bare
# Debian python3 has no venv module. Those are added only when this machine lacks them.
system-packages:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	[ -f "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] \
	  || missing="$$missing python3-dev"; \
	command -v cc >/dev/null || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "make setup: missing Debian packages:$$missing (run as root)" >&2; exit 1; \
	  fi; \
	  echo "Installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Before the project's own install: pyproject pins pyfuse3 to the same version, so pip keeps
# the patched build instead of fetching upstream's.
$(PYFUSE3_STAMP): $(PYFUSE3_INPUTS) | $(VPY)
	scripts/build_pyfuse3.sh $(VPY)
	touch $@

$(STAMP): pyproject.toml $(PYFUSE3_STAMP) | $(VPY)
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

# A dead view left by a crashed demo fails mkdir; serve itself reuses it (SPEC 2).
run: setup
	@grep -qF " $(CURDIR)/mnt " /proc/self/mountinfo || mkdir -p mnt
	@if [ ! -d demo-src ]; then \
	  mkdir -p demo-src/notes; \
	  echo 'Hello from the fusemount demo source.' > demo-src/hello.txt; \
	  printf '# Demo\n\nFiles here are served under mnt/demo.\n' > demo-src/README.md; \
	  echo 'first note' > demo-src/notes/one.txt; \
	  echo 'second note' > demo-src/notes/two.txt; \
	fi
	$(VENV)/bin/fusemount serve ./mnt --state ./.demo-state.json --demo ./demo-src

test: setup
	$(VPY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VPY) -m mypy fusemount tests $(wildcard scripts/*.py)

bench: setup
	$(VPY) scripts/bench.py

# mount(8), fstab and systemd find helpers on the standard PATH only.
install: setup
	ln -sf $(CURDIR)/$(VENV)/bin/fusemount /usr/local/bin/fusemount

# Benchmark results are records, not build output: clean keeps bench-results/.
# Never rm -r mnt: while the demo runs it is the view, and deleting through it deletes sources.
clean:
	@if grep -qF " $(CURDIR)/mnt " /proc/self/mountinfo; then \
	  echo "make clean: mnt is mounted; stop the demo first (fusemount stop mnt)" >&2; exit 1; \
	fi
	@if [ -d mnt ]; then rmdir mnt || true; fi
	rm -rf demo-src .demo-state.json .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
