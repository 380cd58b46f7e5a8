#!/usr/bin/env bash
# Prints the libclang that bindgen (through clang-sys) would load, and exits 1 if there is none.
# clang-sys loads `libclang.so`, `libclang-N.so` or `libclang.so.N` (and `libclang-N.so.M`) from
# LIBCLANG_PATH or the usual library dirs. LLVM's C++ library `libclang-cpp.so.N` is another
# library that bindgen cannot use, and a machine can have it without libclang: it never counts.
#
#   scripts/find-libclang.sh            # LIBCLANG_PATH, ldconfig's cache, the usual dirs
#   scripts/find-libclang.sh DIR...     # only these dirs (for tests)
set -uo pipefail
libclang_name='^libclang(-[0-9][0-9.]*)?\.so(\.[0-9.]+)?$'
if [ $# -gt 0 ]; then
  dirs=("$@")
else
  dirs=(${LIBCLANG_PATH:+"$LIBCLANG_PATH"} /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/lib)
  found=$(ldconfig -p 2>/dev/null | awk '{print $1" "$NF}' | while read -r name path; do
    if [[ "$name" =~ $libclang_name ]]; then echo "$path"; break; fi
  done)
  [ -n "$found" ] && { echo "$found"; exit 0; }
fi
for d in "${dirs[@]}"; do
  [ -d "$d" ] || continue
  for f in "$d"/*; do
    name=${f##*/}
    if [[ "$name" =~ $libclang_name ]]; then echo "$f"; exit 0; fi
  done
done
exit 1
