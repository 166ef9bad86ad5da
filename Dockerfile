# GPT-2 inference server image. Two targets:
#   docker build -t gpt2-serve .                        GPU (default, last stage): CUDA 12 + cuDNN 9 runtime,
#                                                       onnxruntime-node's CUDA provider installed
#   docker build --target cpu -t gpt2-serve:cpu .        CPU only: node:20 bookworm-slim, no CUDA anywhere
# Both run `node dist/src/main.js serve` as a non-root user, read models from the /models volume
# and answer /health on port 8000. docs/deploy.md explains how to run them; test/deploy.test.ts
# checks this file against the repository (COPY sources, entrypoint, ports, settings).

# Pinned versions (change them together with docs/deploy.md):
# - Node 20 (package.json engines >=20), Debian 12 slim; also the source of the GPU image's node binary.
ARG NODE_IMAGE=node:20.20.2-bookworm-slim
# - npm 11, the version the lockfile is made and checked with (node images ship their own npm).
ARG NPM_VERSION=11.19.1
# - onnxruntime-node 1.30's linux-x64 CUDA provider is its "cuda12" build: it needs CUDA 12.x
#   (any minor: CUDA minor-version compatibility) and cuDNN 9.x, plus libnvrtc.so.12; the
#   nvidia/cuda "cudnn-runtime" images carry all of them. 12.9.1 is the final CUDA 12 update.
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# build: install exactly as the README and CI do (`npm ci`, whose `prepare` script runs tsc and
# writes dist/), then drop the dev dependencies.
FROM ${NODE_IMAGE} AS build
ARG NPM_VERSION
RUN npm install --global npm@${NPM_VERSION} && npm --version
WORKDIR /app
# .npmrc carries `onnxruntime-node-install=skip`: npm ci never downloads the CUDA provider by
# itself (and npm 11 may block dependency install scripts anyway); the GPU stage does it below.
COPY package.json package-lock.json .npmrc tsconfig.json ./
COPY src ./src
COPY scripts ./scripts
# Not tools/ (benchmarks, soak, eval, GPU check): tsc builds what is here, the image serves only.
# The browser playground's static files, served as they are (src/server/routes/playground.ts).
COPY playground ./playground
RUN npm ci \
 && test -f dist/src/main.js || { echo "error: npm ci did not build dist/src/main.js" >&2; exit 1; }
# Production dependencies only. onnxruntime-node ships binaries for every platform (~250 MB); the
# image keeps its own platform's only (linux/x64 or linux/arm64, whichever this stage runs on).
RUN npm prune --omit=dev \
 && ort=node_modules/onnxruntime-node/bin/napi-v6 \
 && arch="$(node -p process.arch)" \
 && test -f "$ort/linux/$arch/onnxruntime_binding.node" \
 && find "$ort" -mindepth 1 -maxdepth 1 ! -name linux -exec rm -rf {} + \
 && find "$ort/linux" -mindepth 1 -maxdepth 1 ! -name "$arch" -exec rm -rf {} + \
 && test "$(ls "$ort")" = linux && test "$(ls "$ort/linux")" = "$arch" \
 && test -f dist/src/main.js \
 && test ! -e node_modules/typescript || { echo "error: npm prune --omit=dev or the binary pruning failed" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# cpu: the small CPU-only image (`docker build --target cpu`). Declared before the CUDA stages so
# that even the legacy builder stops here without downloading the CUDA provider.
FROM ${NODE_IMAGE} AS cpu
# GLIBC_TUNABLES: glibc asks for transparent huge pages for its large blocks (the weights, the KV
# pool), which hosts in THP "madvise" mode give only on request (src/util/huge-pages.ts).
ENV NODE_ENV=production \
    ORT_DISABLE_TELEMETRY=1 \
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
    GPT2_MODEL=/models/gpt2 \
    GPT2_HOST=0.0.0.0 \
    GPT2_PORT=8000 \
    GPT2_EXECUTION_PROVIDER=auto
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/playground ./playground
# /app/models -> /models: the server's and scripts' default paths (models/gpt2, models/.hub-cache,
# models/tiny-random-gpt2) land in the volume too. The image's own `node` user is uid 1000.
RUN mkdir -p /models \
 && chown node:node /models \
 && ln -s /models /app/models
VOLUME /models
USER node
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.GPT2_PORT||8000)+'/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# Exec form: node is PID 1 and receives SIGTERM itself, so the graceful drain runs on `docker stop`.
ENTRYPOINT ["node", "dist/src/main.js", "serve"]

# ---------------------------------------------------------------------------------------------
# build-cuda: the production node_modules plus onnxruntime-node's CUDA provider libraries, which
# its install script downloads from NuGet (Microsoft.ML.OnnxRuntime.Gpu.Linux, same version).
# The script is run by hand: npm 11 blocks dependency install scripts and .npmrc says skip; the
# environment variable wins over .npmrc. The build fails unless the provider library landed.
FROM build AS build-cuda
RUN ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install \
 && test -s node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so \
 || { echo "error: libonnxruntime_providers_cuda.so was not installed into node_modules/onnxruntime-node/bin/napi-v6/linux/x64/" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# gpu (default target): CUDA 12 + cuDNN 9 runtime with Node 20 copied from the official image.
FROM ${CUDA_IMAGE} AS gpu
COPY --from=build /usr/local/bin/node /usr/local/bin/node
ENV NODE_ENV=production \
    ORT_DISABLE_TELEMETRY=1 \
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
    GPT2_MODEL=/models/gpt2 \
    GPT2_HOST=0.0.0.0 \
    GPT2_PORT=8000 \
    GPT2_EXECUTION_PROVIDER=auto
WORKDIR /app
COPY --from=build-cuda /app/package.json ./package.json
COPY --from=build-cuda /app/node_modules ./node_modules
COPY --from=build-cuda /app/dist ./dist
COPY --from=build-cuda /app/playground ./playground
# Every shared library the CUDA provider links must resolve in this image (libcuda.so.1 comes
# from the host driver at run time, so it is the one allowed to be missing here). Then the same
# uid 1000 user as the CPU image (Ubuntu 24.04 images ship an `ubuntu` user with that uid).
RUN node --version \
 && ort=node_modules/onnxruntime-node/bin/napi-v6/linux/x64 \
 && deps="$(LD_LIBRARY_PATH="$ort:$LD_LIBRARY_PATH" ldd "$ort/libonnxruntime_providers_cuda.so")" \
 && missing="$(printf '%s\n' "$deps" | grep 'not found' | grep -v 'libcuda\.so' || true)" \
 && if [ -n "$missing" ]; then echo "error: the CUDA provider's libraries are missing from the base image:" >&2; echo "$missing" >&2; exit 1; fi \
 && if id -u ubuntu >/dev/null 2>&1; then userdel ubuntu && rm -rf /home/ubuntu; fi \
 && if getent group ubuntu >/dev/null; then groupdel ubuntu; fi \
 && groupadd --gid 1000 node \
 && useradd --uid 1000 --gid node --create-home --shell /bin/sh node \
 && mkdir -p /models \
 && chown node:node /models \
 && ln -s /models /app/models
VOLUME /models
USER node
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.GPT2_PORT||8000)+'/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "dist/src/main.js", "serve"]
