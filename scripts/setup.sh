#!/usr/bin/env bash
# Build .venv with everything the workers, agents and tests need.
# torch is installed FIRST and pinned: a bare `torch` requirement would pull a multi-GB CUDA
# build on CPU machines. espeak-ng (test speech) and Chromium (browser tests) come from Debian
# when we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v espeak-ng >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq espeak-ng sox >/dev/null
fi
# Chromium runs the browser tests (tests/test_browser.py: the page and the WebRTC bot with a
# WAV as the microphone); without it they skip.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[server,modal,agents,dev]"
touch .venv/.installed
