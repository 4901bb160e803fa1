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
PYFUSE3_WHEELS := $(VENV)/wheels
PYFUSE3_INPUTS := binding/pyfuse3-3.5.0.patch binding/build-constraints.txt scripts/build_pyfuse3.sh
# patch applies the binding's patch; qemu-utils and rsync are test dependencies (qemu-img and
# rsync -aH on the view).
DEB_PACKAGES := fuse3 libfuse3-dev pkg-config patch qemu-utils rsync
PYTEST_ARGS ?=

.PHONY: setup system-packages run test lint bench install uninstall clean distclean

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
	scripts/build_pyfuse3.sh $(VPY) $(PYFUSE3_WHEELS)
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

# --- install / uninstall (README "Running as a service") ---------------------------------
# A self-contained runtime: its own venv in PREFIX, made with the system Python (a pyenv or
# a checkout under /root would be unreadable to users), holding fusemount and its runtime
# dependencies only, readable by everyone. The man page and the shell completions are
# generated from the argument parser (fusemount.cli.commands.build_parser) by argparse-manpage and
# shtab, fetched into a scratch directory that is deleted afterwards: no build or test tool
# stays in the runtime. mount(8), fstab and systemd find `fusemount` on the standard PATH
# only, hence the link in BINDIR; mount.fuse3 runs it for `-t fuse.fusemount`.
# RUNTIME_PIP_ARGS: extra pip arguments for the runtime (a locally built wheel, say).
PREFIX ?= /opt/fusemount
BINDIR ?= /usr/local/bin
MANDIR ?= /usr/local/share/man
BASHCOMPDIR ?= /usr/local/share/bash-completion/completions
ZSHCOMPDIR ?= /usr/local/share/zsh/site-functions
UNITDIR ?= /usr/local/lib/systemd/system
INSTALL_PYTHON ?= /usr/bin/python3
RUNTIME_PIP_ARGS ?=
DOC_TOOLS := 'argparse-manpage>=4.5' 'shtab>=1.7'  # as pyproject's docs extra
RUNTIME_MARK := .fusemount-runtime
PIP_QUIET := -q --disable-pip-version-check --no-input

# The runtime gets the same patched pyfuse3 as the checkout (README "The binding"): the
# wheel setup built, or a fresh build where the system Python differs from the venv's.
install: system-packages $(PYFUSE3_STAMP)
	@set -euo pipefail; umask 022; \
	if [ -e "$(PREFIX)" ] && [ ! -e "$(PREFIX)/$(RUNTIME_MARK)" ]; then \
	  echo "make install: $(PREFIX) exists and is no fusemount runtime; not replacing it" >&2; \
	  exit 1; \
	fi; \
	scratch=$$(mktemp -d /tmp/fusemount-install.XXXXXX); trap 'rm -rf "$$scratch"' EXIT; \
	mkdir "$$scratch/src"; \
	cp -r fusemount pyproject.toml README.md LICENSE "$$scratch/src/"; \
	rm -rf "$(PREFIX)"; \
	$(INSTALL_PYTHON) -m venv "$(PREFIX)"; \
	touch "$(PREFIX)/$(RUNTIME_MARK)"; \
	if ! "$(PREFIX)/bin/python" -m pip install $(PIP_QUIET) $(PYFUSE3_WHEELS)/pyfuse3-*.whl \
	    2>/dev/null; then \
	  scripts/build_pyfuse3.sh "$(PREFIX)/bin/python"; \
	fi; \
	"$(PREFIX)/bin/python" -m pip install $(PIP_QUIET) $(RUNTIME_PIP_ARGS) "$$scratch/src"; \
	"$(PREFIX)/bin/python" -m pip install $(PIP_QUIET) --target "$$scratch/tools" $(DOC_TOOLS); \
	share="$(PREFIX)/share"; \
	mkdir -p "$$share/man/man8" "$$share/bash-completion" "$$share/zsh" "$$share/doc/fusemount"; \
	version=$$("$(PREFIX)/bin/fusemount" --version | cut -d' ' -f2); \
	PYTHONPATH="$$scratch/tools" "$(PREFIX)/bin/python" -c \
	  'import sys; from argparse_manpage.cli import main; sys.exit(main())' \
	  --module fusemount.cli.commands --function build_parser --prog fusemount --manual-section 8 \
	  --manual-title "System Administration" --project-name fusemount --version "$$version" \
	  --description "a FUSE view of managed mounts" --output "$$share/man/man8/fusemount.8"; \
	PYTHONPATH="$$scratch/tools" "$(PREFIX)/bin/python" -m shtab --shell=bash \
	  --prog fusemount fusemount.cli.commands.build_parser > "$$share/bash-completion/fusemount"; \
	PYTHONPATH="$$scratch/tools" "$(PREFIX)/bin/python" -m shtab --shell=zsh \
	  --prog fusemount fusemount.cli.commands.build_parser > "$$share/zsh/_fusemount"; \
	cp README.md LICENSE "$$share/doc/fusemount/"; \
	chmod -R a+rX "$(PREFIX)"; \
	mkdir -p "$(BINDIR)" "$(MANDIR)/man8" "$(BASHCOMPDIR)" "$(ZSHCOMPDIR)" "$(UNITDIR)"; \
	ln -sfn "$(PREFIX)/bin/fusemount" "$(BINDIR)/fusemount"; \
	ln -sfn "$$share/man/man8/fusemount.8" "$(MANDIR)/man8/fusemount.8"; \
	ln -sfn "$$share/bash-completion/fusemount" "$(BASHCOMPDIR)/fusemount"; \
	ln -sfn "$$share/zsh/_fusemount" "$(ZSHCOMPDIR)/_fusemount"; \
	sed -e 's|/usr/local/bin/fusemount|$(BINDIR)/fusemount|g' -e 's|/opt/fusemount|$(PREFIX)|g' \
	  scripts/fusemount@.service > "$(UNITDIR)/fusemount@.service"; \
	chmod 644 "$(UNITDIR)/fusemount@.service"; \
	if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi; \
	echo "installed fusemount $$version in $(PREFIX); command $(BINDIR)/fusemount"

# Removes only what install made: links that point into PREFIX, and PREFIX if it is a runtime.
uninstall:
	@set -eu; \
	for link in "$(BINDIR)/fusemount" "$(MANDIR)/man8/fusemount.8" \
	    "$(BASHCOMPDIR)/fusemount" "$(ZSHCOMPDIR)/_fusemount"; do \
	  case "$$(readlink "$$link" || true)" in "$(PREFIX)"/*) rm -f "$$link";; esac; \
	done; \
	if grep -qs '^ExecStart=$(BINDIR)/fusemount serve' "$(UNITDIR)/fusemount@.service"; then \
	  rm -f "$(UNITDIR)/fusemount@.service"; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi; \
	fi; \
	if [ -e "$(PREFIX)/$(RUNTIME_MARK)" ]; then rm -rf "$(PREFIX)"; fi; \
	echo "uninstalled fusemount from $(PREFIX)"

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
