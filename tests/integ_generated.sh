#!/usr/bin/env bash
# The clients' generated constants (client/python/xcoder/_generated.py,
# client/js/lib/generated.js) are what build/gen_constants writes now from the C
# tables (include/xc_error.h, include/xc_shm.h, proto/xc_schema.h): a code, field
# or dtype changed in C without `make generate` fails here. Also checks that the
# Python and JS files agree with the C tables they claim to come from (a few
# spot values), so a broken generator cannot pass by writing both files wrong.
set -u
cd "$(dirname "$0")/.."
fails=0
ok() { echo "ok - $1"; }
nok() { echo "not ok - $1: $2"; fails=$((fails + 1)); }
if [ ! -x build/gen_constants ]; then
  echo "not ok - generated setup: build/gen_constants is not built (make)"; exit 1
fi
T=$(mktemp -d /tmp/xc_gen.XXXXXX)
trap 'rm -rf "$T"' EXIT
for lang in py js; do
  case $lang in py) f=client/python/xcoder/_generated.py ;; js) f=client/js/lib/generated.js ;; esac
  if ! build/gen_constants $lang > "$T/out.$lang"; then
    nok "generated $lang" "build/gen_constants $lang failed"
  elif cmp -s "$T/out.$lang" "$f"; then
    ok "generated $lang: $f is current"
  else
    nok "generated $lang" "$f differs from what the C tables give now; run make generate ($(diff "$f" "$T/out.$lang" | head -3 | tr '\n' ' '))"
  fi
done
# spot values from the C headers themselves, read independently of the generator
want_busy=$(grep -o 'X(XC_EBUSY, *-[0-9]*' include/xc_error.h | grep -o -- '-[0-9]*$')
got_py=$(/usr/bin/python3 -c "import sys; sys.path.insert(0, 'client/python'); from xcoder import _generated as g; print(g.ERROR_CODES['XC_EBUSY'], g.CLASS_NAMES[2], g.TABLE_COLUMNS[7][0], g.DTYPES['i64'][1])" 2>&1)
if [ "$got_py" = "$want_busy chat_only last_step 3" ]; then ok "generated py: values as in C"
else nok "generated py: values as in C" "got '$got_py', want '$want_busy chat_only last_step 3'"; fi
if command -v node >/dev/null 2>&1; then
  got_js=$(node -e "const g = require('./client/js/lib/generated.js'); console.log(g.ERROR_CODES.XC_EBUSY, g.CLASS_NAMES[2], g.TABLE_COLUMNS[7][0], g.DTYPES.i64[1])" 2>&1)
  if [ "$got_js" = "$want_busy chat_only last_step 3" ]; then ok "generated js: values as in C"
  else nok "generated js: values as in C" "got '$got_js', want '$want_busy chat_only last_step 3'"; fi
else
  nok "generated js: values as in C" "node is not installed (make deps installs nodejs)"
fi
exit $((fails > 0))
