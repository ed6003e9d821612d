#!/bin/sh
# exports.sh LIB: libmpreg.so exports its public API and nothing else
# (cmake/libmpreg.map). Fails, naming them, when a symbol outside mpreg_*
# is exported, or when none of the API is.
set -eu
lib=$1
syms=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVWiu]$/ {print $3}' | sed 's/@.*//')
api=$(printf '%s\n' "$syms" | grep -c '^mpreg_' || true)
other=$(printf '%s\n' "$syms" | grep -v '^mpreg_' | grep -v '^MPREG_0$' | grep -v '^$' || true)
if [ -n "$other" ]; then
  echo "exports.sh: $lib exports symbols outside the public API:" >&2
  printf '%s\n' "$other" | head -20 >&2
  exit 1
fi
if [ "$api" -lt 20 ]; then
  echo "exports.sh: $lib exports only $api mpreg_ symbols" >&2
  exit 1
fi
echo "exports.sh: $api mpreg_* symbols exported, nothing else"
