#!/usr/bin/env bash
# Builds the upstream binaries of the local cluster from the Go module proxy into a cache
# directory outside the repository, skipping every binary already built at its pinned version.
#
#   hack/build-binaries.sh [--check]     (--check: only report what is missing, exit 1 if anything is)
#   hack/build-binaries.sh --only NAME   (one component: kubernetes, etcd, kwok, helm, kubeconform,
#                                         scheduler-plugins, kueue; or lws, LeaderWorkerSet's manager, which
#                                         only the scale benchmark runs and which is built only when named)
#
# Cache: ${MIMO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mimo-operator}; binaries in its bin/,
# kwok's stage files in kwok-stages/, one throwaway Go module per component in build/.
# Versions: hack/versions.env (the only place they are pinned).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

CACHE=${MIMO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mimo-operator}
BIN=$CACHE/bin
BUILD=$CACHE/build
mkdir -p "$BIN" "$BUILD"

export GOTOOLCHAIN=local        # no toolchain downloads: an unexpected `go 1.27` fails loudly
export CGO_ENABLED=0            # upstream builds the control plane statically
export GOFLAGS="-mod=mod -buildvcs=false"

started=$(date +%s)
log() { printf '[build-binaries %4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }
die() { printf 'build-binaries: error: %s\n' "$*" >&2; exit 1; }

check_only=false
only=""
[ "${1:-}" = "--check" ] && check_only=true
[ "${1:-}" = "--only" ] && only=${2:?--only needs a component name}

if ! command -v go >/dev/null 2>&1; then
  die "Go is not installed (needed: go >= 1.26 on PATH, to build kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok, helm and kubeconform from the Go module proxy). Install Go 1.26 and run this script again."
fi
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "${go_minor:-0}" -ge 26 ] || die "Go $(go env GOVERSION) is too old: the pinned Kubernetes and kwok need go >= 1.26."

# built NAME VERSION: true when $BIN/NAME exists and was built at VERSION.
built() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$BIN/.$1.version"; }

missing=()
built kube-apiserver "$KUBERNETES_VERSION" || built kube-apiserver "$KUBERNETES_FALLBACK_VERSION" || missing+=(kubernetes)
built etcd "$ETCD_VERSION" || missing+=(etcd)
built kwok "$KWOK_VERSION" && [ -d "$CACHE/kwok-stages" ] || missing+=(kwok)
built helm "$HELM_VERSION" || missing+=(helm)
built kubeconform "$KUBECONFORM_VERSION" || missing+=(kubeconform)
built scheduler-plugins "$SCHEDULER_PLUGINS_VERSION" && [ -f "$CACHE/scheduler-plugins/podgroup-crd.yaml" ] \
  || missing+=(scheduler-plugins)
built kueue "$KUEUE_VERSION" && [ -f "$CACHE/kueue/crd/kustomization.yaml" ] && [ -f "$CACHE/kueue/webhooks.yaml" ] || missing+=(kueue)
if [ "$only" = lws ]; then
  built lws "$LWS_VERSION" && [ -f "$CACHE/lws/crd.yaml" ] && [ -f "$CACHE/lws/webhooks.yaml" ] || missing+=(lws)
fi
if [ -n "$only" ]; then
  case " ${missing[*]} " in *" $only "*) missing=("$only") ;; *) missing=() ;; esac
fi
if $check_only; then
  if [ ${#missing[@]} -eq 0 ]; then log "all binaries present in $BIN"; exit 0; fi
  log "missing: ${missing[*]}"; exit 1
fi
if [ ${#missing[@]} -eq 0 ]; then
  log "all binaries already built in $BIN (versions from hack/versions.env)"
  exit 0
fi
log "building into $BIN: ${missing[*]}"

# new_module DIR: an empty throwaway module whose replace directives we control.
new_module() {
  rm -rf "$1" && mkdir -p "$1"
  (cd "$1" && go mod init example.invalid/mimo-local-cluster-build >/dev/null 2>&1)
}

# proxy_gomod MODULE@VERSION: the path of the go.mod file the proxy serves for it.
proxy_gomod() {
  (cd "$(mktemp -d)" && go mod download -json "$1") | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'
}

build_kubernetes() {
  local version=$1 minor staging dir modfile
  minor=$(echo "$version" | cut -d. -f2)
  staging="v0.${version#v1.}"
  dir=$BUILD/kubernetes-$version
  log "kubernetes $version: reading its go.mod from the module proxy"
  modfile=$(proxy_gomod "k8s.io/kubernetes@$version")
  local need_go
  need_go=$(awk '/^go /{print $2; exit}' "$modfile")
  log "kubernetes $version: needs go $need_go; have $(go env GOVERSION)"
  new_module "$dir"
  (
    cd "$dir"
    go mod edit -go="$need_go"
    # One replace per staging module, generated from k/k's own go.mod so it cannot drift.
    local n=0 m
    for m in $(sed -n 's|^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*|\1|p' "$modfile"); do
      go mod edit -replace="${m}=${m}@${staging}"
      n=$((n + 1))
    done
    log "kubernetes $version: $n staging modules pinned to $staging"
    grep -E '^godebug ' "$modfile" >>go.mod || true
    go mod edit -require="k8s.io/kubernetes@$version"
    cat >tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
    log "kubernetes $version: go mod tidy (downloads the dependency graph once)"
    go mod tidy
    local ldflags="-s -w \
      -X k8s.io/component-base/version.gitVersion=$version \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/component-base/version.gitTreeState=clean \
      -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
      -X k8s.io/client-go/pkg/version.gitVersion=$version \
      -X k8s.io/client-go/pkg/version.gitMajor=1 \
      -X k8s.io/client-go/pkg/version.gitMinor=$minor"
    local cmd
    for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
      log "kubernetes $version: go build $cmd"
      go build -p 2 -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
      mv "$BIN/$cmd.tmp" "$BIN/$cmd"
    done
  )
  local cmd
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do stamp "$cmd" "$version"; done
  log "kubernetes $version: $("$BIN/kube-apiserver" --version)"
}

build_etcd() {
  local dir=$BUILD/etcd-$ETCD_VERSION
  log "etcd $ETCD_VERSION: resolving"
  new_module "$dir"
  (
    cd "$dir"
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    log "etcd $ETCD_VERSION: go build"
    go build -p 2 -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=gomod" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$BIN/etcd.tmp" "$BIN/etcd"
  )
  stamp etcd "$ETCD_VERSION"
  log "etcd: $("$BIN/etcd" --version | head -1)"
}

build_kwok() {
  log "kwok $KWOK_VERSION: go install"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # The bare kwok binary runs no stage unless given some; they ship inside its module.
  local moddir
  moddir=$(cd "$(mktemp -d)" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$CACHE/kwok-stages" && mkdir -p "$CACHE/kwok-stages"
  cp -r "$moddir/kustomize/stage/." "$CACHE/kwok-stages/"
  chmod -R u+w "$CACHE/kwok-stages"
  stamp kwok "$KWOK_VERSION"
  log "kwok: $("$BIN/kwok" --version 2>&1 | head -1)"
}

build_helm() {
  local dir=$BUILD/helm-$HELM_VERSION
  log "helm $HELM_VERSION: resolving"
  new_module "$dir"
  (
    cd "$dir"
    go get "helm.sh/helm/v3@$HELM_VERSION"
    log "helm $HELM_VERSION: go build"
    go build -p 2 -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$BIN/helm.tmp" helm.sh/helm/v3/cmd/helm
    mv "$BIN/helm.tmp" "$BIN/helm"
  )
  stamp helm "$HELM_VERSION"
  log "helm: $("$BIN/helm" version --short 2>/dev/null || true)"
}

build_kubeconform() {
  log "kubeconform $KUBECONFORM_VERSION: go install"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  stamp kubeconform "$KUBECONFORM_VERSION"
}

# The coscheduling gang scheduler: scheduler-plugins' kube-scheduler build, which pins its own Kubernetes
# (and replaces every staging module, like k/k), so it is built in a module that copies its replace block.
# served_or_nearest OLD=NEW@vX.Y.Z: the same replacement, or, when the module proxy does not serve that
# patch release of a staging module (it serves some 0.34 patches only), the nearest patch of the same minor
# that it serves, newer first. Patch releases of one minor keep their Go API.
served_or_nearest() {
  local line=$1 target=${1#*=} module version major minor patch p
  module=${target%@*}
  version=${target#*@}
  if (cd "$(mktemp -d)" && go mod download "$module@$version") >/dev/null 2>&1; then echo "$line"; return; fi
  IFS=. read -r major minor patch <<<"${version#v}"
  for p in $(seq $((patch + 1)) $((patch + 8))) $(seq $((patch - 1)) -1 0); do
    if (cd "$(mktemp -d)" && go mod download "$module@v$major.$minor.$p") >/dev/null 2>&1; then
      log "scheduler-plugins: $module $version is not served; using v$major.$minor.$p" >&2
      echo "${line%@*}@v$major.$minor.$p"
      return
    fi
  done
  echo "$line"  # left as it is: go mod tidy names it if the build needs it
}

build_scheduler_plugins() {
  local version=$SCHEDULER_PLUGINS_VERSION dir=$BUILD/scheduler-plugins-$SCHEDULER_PLUGINS_VERSION modfile k8s
  log "scheduler-plugins $version: reading its go.mod from the module proxy"
  modfile=$(proxy_gomod "sigs.k8s.io/scheduler-plugins@$version")
  k8s=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' "$modfile")
  new_module "$dir"
  (
    cd "$dir"
    go mod edit -go="$(awk '/^go /{print $2; exit}' "$modfile")"
    local line n=0
    # Both forms: a replace ( … ) block and single-line replace directives.
    while read -r line; do
      go mod edit -replace="$(served_or_nearest "$line")"
      n=$((n + 1))
    done < <(sed -n -e 's|^replace \([^ ]*\) => \([^ ]*\) \(v[^ ]*\)$|\1=\2@\3|p' \
                    -e 's|^[[:space:]]\{1,\}\([^ ]*\) => \([^ ]*\) \(v[^ ]*\)$|\1=\2@\3|p' "$modfile")
    log "scheduler-plugins $version: $n replace directives copied (Kubernetes $k8s)"
    go mod edit -require="sigs.k8s.io/scheduler-plugins@$version"
    printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/scheduler-plugins/cmd/scheduler"\n' >tools.go
    go mod tidy
    local minor
    minor=$(echo "$k8s" | cut -d. -f2)
    log "scheduler-plugins $version: go build (a kube-scheduler with the coscheduling plugin)"
    go build -p 2 -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=$minor" \
      -o "$BIN/scheduler-plugins.tmp" sigs.k8s.io/scheduler-plugins/cmd/scheduler
    mv "$BIN/scheduler-plugins.tmp" "$BIN/scheduler-plugins"
  )
  local moddir
  moddir=$(cd "$(mktemp -d)" && go mod download -json "sigs.k8s.io/scheduler-plugins@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$CACHE/scheduler-plugins"
  cp "$moddir/manifests/coscheduling/crd.yaml" "$CACHE/scheduler-plugins/podgroup-crd.yaml"
  chmod u+w "$CACHE/scheduler-plugins/podgroup-crd.yaml"
  stamp scheduler-plugins "$version"
  log "scheduler-plugins: $("$BIN/scheduler-plugins" --version 2>&1 | head -1)"
}

# A manager built from a plain module (no replace directives): PACKAGE of MODULE@VERSION into $BIN/NAME. Then
# MODULE_DIR is the module's source in Go's module cache, where its CRDs and webhook configurations ship.
build_plain_module() {
  local name=$1 module=$2 version=$3 package=$4 ldflags=$5
  local dir=$BUILD/$name-$version
  log "$name $version: resolving"
  new_module "$dir"
  (
    cd "$dir"
    modfile=$(proxy_gomod "$module@$version")
    go mod edit -go="$(awk '/^go /{print $2; exit}' "$modfile")" -require="$module@$version"
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" >tools.go
    go mod tidy
    log "$name $version: go build"
    go build -p 2 -trimpath -ldflags "$ldflags" -o "$BIN/$name.tmp" "$package"
    mv "$BIN/$name.tmp" "$BIN/$name"
  )
  MODULE_DIR=$(cd "$(mktemp -d)" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}

# Kueue's manager (its pod integration admits a gang's pods as one workload when its quota fits).
build_kueue() {
  local version=$KUEUE_VERSION
  build_plain_module kueue sigs.k8s.io/kueue "$version" sigs.k8s.io/kueue/cmd/kueue \
    "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version"
  # Its CRDs with the kustomization that says which of them convert through its webhook, and its webhooks.
  rm -rf "$CACHE/kueue" && mkdir -p "$CACHE/kueue"
  cp -r "$MODULE_DIR/config/components/crd" "$CACHE/kueue/crd"
  cp "$MODULE_DIR/config/components/webhook/manifests.yaml" "$CACHE/kueue/webhooks.yaml"
  chmod -R u+w "$CACHE/kueue"
  stamp kueue "$version"
  log "kueue: built $version"
}

# LeaderWorkerSet's manager, for the scale benchmark's comparison (a leader pod and its workers' StatefulSet
# per group).
build_lws() {
  local version=$LWS_VERSION
  build_plain_module lws sigs.k8s.io/lws "$version" sigs.k8s.io/lws/cmd "-s -w"
  rm -rf "$CACHE/lws" && mkdir -p "$CACHE/lws"
  cp "$MODULE_DIR/config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml" "$CACHE/lws/crd.yaml"
  cp "$MODULE_DIR/config/webhook/manifests.yaml" "$CACHE/lws/webhooks.yaml"
  chmod -R u+w "$CACHE/lws"
  stamp lws "$version"
  log "lws: built $version"
}

for what in "${missing[@]}"; do
  case $what in
    kubernetes)
      if ! build_kubernetes "$KUBERNETES_VERSION"; then
        log "kubernetes $KUBERNETES_VERSION did not build; trying $KUBERNETES_FALLBACK_VERSION"
        build_kubernetes "$KUBERNETES_FALLBACK_VERSION" || die "neither Kubernetes $KUBERNETES_VERSION nor $KUBERNETES_FALLBACK_VERSION builds (see the output above)"
      fi ;;
    etcd) build_etcd ;;
    kwok) build_kwok ;;
    helm) build_helm ;;
    kubeconform) build_kubeconform ;;
    scheduler-plugins) build_scheduler_plugins ;;
    kueue) build_kueue ;;
    lws) build_lws ;;
  esac
done
log "done: $(ls "$BIN" | tr '\n' ' ')"
