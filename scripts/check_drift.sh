#!/usr/bin/env bash
# Fail when the exported library disagrees with the notebooks: run nbdev_export and compare
# `git status` of the library folder before and after. A hand edit to a .py is undone by the export
# (status changes); a notebook edit that was never exported shows up as a modified module.
set -uo pipefail
cd "${1:-.}"
lib=$(sed -n 's/^lib_path *= *//p' settings.ini | head -1)
before=$(git status --porcelain -- "$lib")
nbdev_export || { echo "FAIL: nbdev_export failed"; exit 1; }
after=$(git status --porcelain -- "$lib")
if [ "$before" != "$after" ] || [ -n "$after" ]; then
  echo "FAIL: $lib/ disagrees with the notebooks. Edit nbs/, run nbdev_export, and commit both."
  echo "before export:"; echo "${before:-  (clean)}"; echo "after export:"; echo "${after:-  (clean)}"
  git --no-pager diff --stat -- "$lib"
  exit 1
fi
echo "OK: $lib/ matches the notebooks"
