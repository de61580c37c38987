# Sourced by the ci scripts: ONNX Runtime libraries from the npm package onnxruntime-node
# (the only registry that ships ORT's arm64 Linux and macOS builds), packed once into the
# caller's ORT_NPM_DIR.
ORT_NODE_VERSION=${ORT_NODE_VERSION:-1.30.0}

# ort_npm_lib GLOB: the path of the file matching GLOB (below package/bin/napi-v*/), extracted
# from the cached tarball, which is fetched with `npm pack` the first time.
ort_npm_lib() {
  local dir=$ORT_NPM_DIR/$ORT_NODE_VERSION pattern="package/bin/napi-v*/$1" found
  found=$(ls $dir/$pattern 2>/dev/null | head -n 1 || true)
  if [ -z "$found" ]; then
    local tgz=$ORT_NPM_DIR/onnxruntime-node-$ORT_NODE_VERSION.tgz
    mkdir -p "$dir"
    if [ ! -f "$tgz" ]; then
      command -v npm >/dev/null || { echo "ort_npm: npm not found (install Node.js/npm, or put $tgz there yourself)" >&2; exit 2; }
      (cd "$ORT_NPM_DIR" && npm pack --silent "onnxruntime-node@$ORT_NODE_VERSION" >/dev/null)
    fi
    tar -xzf "$tgz" -C "$dir" --wildcards "$pattern"
    found=$(ls $dir/$pattern | head -n 1)
  fi
  echo "$found"
}
