# scripts/kube-node.sh — the node half of scripts/kube (sourced by it; not run on its own).
#
# One node, `sagashop-node`, on this machine: Debian's containerd and runc, Debian's CNI plugins
# on a bridge of our own, kubelet, kube-scheduler and kube-proxy (the Kubernetes release of
# kube-build/go.mod), and CoreDNS (kube-build/coredns) as the cluster DNS. Everything it puts
# outside $node is listed in $node/undo.* and taken back by node_down.
#
# Addresses (RFC 2544's 198.18.0.0/15, which nothing outside this machine uses):
#   198.18.0.0/16  pods, on the bridge sagashop0; 198.18.0.1 is the bridge, the node, the API
#                  server, the cluster DNS and the host's Kafka as pods see them
#   198.19.0.0/16  Services (198.19.0.1 is `kubernetes`)
# No masquerade, and a FORWARD rule drops whatever a pod sends outside 198.18.0.0/15: no pod can
# send a packet off this machine.

node_dir="$run/node"
node_name=sagashop-node
bridge=sagashop0
gateway=198.18.0.1
pod_cidr=198.18.0.0/16
service_cidr=198.19.0.0/16
kubernetes_service_ip=198.19.0.1
fence_cidr=198.18.0.0/15
coredns_version=$(sed -n 's/^require github.com\/coredns\/coredns \(v[0-9.]*\).*/\1/p' "$here/kube-build/coredns/go.mod")
coredns_bin="$cache/coredns-$coredns_version/coredns"
pause_image=localhost/pause:3.10
node_packages=(containerd runc containernetworking-plugins conntrack iptables)
# What kubelet, kube-proxy and the bridge plugin change; node_down puts back what was there.
node_sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory vm.panic_on_oom kernel.panic
  kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.ipv4.conf.all.route_localnet)
# Folders outside $node that kubelet, containerd or the CNI plugins write to whatever we configure.
node_outside=(/var/lib/cni /var/log/containers /var/log/pods /var/lib/kubelet /run/containerd
  /opt/containerd /etc/cni /var/run/netns)

node_wanted() { [[ "${KUBE_NODE:-true}" != false ]]; }

node_require() {
  local missing=() p
  for p in "${node_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) ||
    die "the node needs ${missing[*]} (Debian: scripts/deps ${missing[*]}; or KUBE_NODE=false for the control plane alone)"
  [[ $(id -u) -eq 0 ]] || die "the node needs root (bridges, iptables, mounts); or KUBE_NODE=false for the control plane alone"
  [[ -d /proc/sys/net/bridge ]] || die "the kernel has no bridge netfilter (modprobe br_netfilter)"
  ! ip link show "$bridge" >/dev/null 2>&1 ||
    die "the bridge $bridge already exists: another node runs, or one was left behind (scripts/kube down)"
}

# node_build: kubelet, kube-scheduler and kube-proxy come from build(); CoreDNS and pause here.
node_build() {
  if [[ ! -x "$coredns_bin" ]]; then
    say "building CoreDNS $coredns_version with the plugins the cluster DNS uses (first run only; ~1-4 min)"
    local started=$SECONDS
    rm -rf "$coredns_bin.tmp"
    (cd "$here/kube-build/coredns" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath \
      -ldflags="-s -w" -o "$coredns_bin.tmp" .) || die "building CoreDNS failed (see the go output above)"
    mv "$coredns_bin.tmp" "$coredns_bin"
    say "built CoreDNS in $((SECONDS - started))s"
  fi
  if [[ ! -x "$bin/pause" || "$here/kube-build/pause/pause.c" -nt "$bin/pause" ]]; then
    gcc -static -O2 -o "$bin/pause" "$here/kube-build/pause/pause.c" ||
      die "building the pod sandbox (gcc -static; Debian: build-essential) failed"
  fi
}

# node_network: the bridge, its address and the fence. Runs before the API server, which binds
# to the bridge's address so that pods reach it.
node_network() {
  mkdir -p "$node_dir"
  : >"$node_dir/undo.sysctl"
  local s value
  for s in "${node_sysctls[@]}"; do
    value=$(sysctl -n "$s" 2>/dev/null) && printf '%s=%s\n' "$s" "$value" >>"$node_dir/undo.sysctl"
  done
  : >"$node_dir/undo.paths"
  for s in "${node_outside[@]}"; do
    [[ -e "$s" ]] || printf '%s\n' "$s" >>"$node_dir/undo.paths"
  done
  ip link add "$bridge" type bridge || die "could not create the bridge $bridge"
  ip addr add "$gateway/16" dev "$bridge"
  ip link set "$bridge" up
  # Routed pod traffic (to a Service, to the host) and bridged traffic both pass iptables, so a
  # pod can reach a Service whose endpoint is on the same bridge.
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  iptables -N SAGASHOP-FENCE
  iptables -A SAGASHOP-FENCE -d "$fence_cidr" -j RETURN
  iptables -A SAGASHOP-FENCE -j DROP
  node_fence
}

# node_fence: (again) put the fence first in FORWARD; kube-proxy and kubelet insert rules there.
node_fence() {
  iptables -D FORWARD -s "$pod_cidr" -j SAGASHOP-FENCE 2>/dev/null || true
  iptables -I FORWARD 1 -s "$pod_cidr" -j SAGASHOP-FENCE
}

node_pki() {
  local pki="$run/pki"
  # The API server's client certificate for the kubelet (logs, exec, port-forward).
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$pki/kubelet-client.key" -out "$pki/kubelet-client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$pki/client.ext"
  openssl x509 -req -in "$pki/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 365 -extfile "$pki/client.ext" -out "$pki/kubelet-client.crt" 2>/dev/null
  chmod 600 "$pki/kubelet-client.key"
}

ctr_() { ctr --address "$node_dir/containerd/containerd.sock" -n k8s.io "$@"; }

# node_tokens: the node's components authenticate with tokens in system:masters, as the
# controller manager does (the API server runs RBAC only, without the Node authorizer).
node_tokens() {
  local who
  for who in kubelet kube-scheduler kube-proxy coredns; do
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$run/$who.token"
    printf '%s,system:%s,uid-%s,"system:masters"\n' "$(<"$run/$who.token")" "$who" "$who" >>"$run/pki/tokens.csv"
    chmod 600 "$run/$who.token"
  done
}

node_up() {
  local pki="$run/pki" started=$SECONDS who
  mkdir -p "$node_dir"/{containerd,cni/net.d,cni/ipam,kubelet/manifests,kubelet/pod-logs}

  cat >"$node_dir/containerd/config.toml" <<EOF
version = 2
root = "$node_dir/containerd/root"
state = "$node_dir/containerd/state"
[grpc]
  address = "$node_dir/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node_dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Root here may not lower oom_score_adj (no CAP_SYS_RESOURCE): without this every sandbox fails
  # with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  sandbox_image = "$pause_image"
  netns_mounts_under_state_dir = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni/net.d"
EOF
  cat >"$node_dir/cni/net.d/10-sagashop.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "sagashop",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_cidr", "rangeStart": "198.18.1.1", "gateway": "$gateway"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$node_dir/cni/ipam"
      }
    }
  ]
}
EOF
  start containerd containerd --config "$node_dir/containerd/config.toml"
  wait_for containerd 30 ctr_ version

  # The pod sandbox image, assembled here (nothing can be pulled).
  "$here/oci-image" --name "$pause_image" --out "$node_dir/pause.tar" --entrypoint '["/pause"]' \
    --user 65535:65535 --add "$bin/pause=/pause" >/dev/null
  ctr_ images import "$node_dir/pause.tar" >/dev/null || die "could not import the pause image into containerd"

  for who in kubelet kube-scheduler kube-proxy coredns; do
    write_kubeconfig "$run/$who.kubeconfig" "system:$who" "$(<"$run/$who.token")"
  done
  : >"$node_dir/resolv.conf"
  cat >"$node_dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$node_dir/containerd/containerd.sock
cgroupDriver: cgroupfs
# This machine kind runs cgroup v1: a deprecation warning from kubelet 1.36, not a refusal.
failCgroupV1: false
failSwapOn: false
address: $gateway
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podLogsDir: $node_dir/kubelet/pod-logs
staticPodPath: $node_dir/kubelet/manifests
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: AlwaysAllow
resolvConf: $node_dir/resolv.conf
clusterDNS: ["$gateway"]
clusterDomain: cluster.local
# Images here are assembled and imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
serializeImagePulls: false
volumePluginDir: $node_dir/kubelet/volume-plugins
EOF
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$run/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$run/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$run/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$(free_port "$(<"$run/apiserver.port")")" --leader-elect=false
  start kubelet "$bin/kubelet" --config "$node_dir/kubelet/config.yaml" \
    --kubeconfig "$run/kubelet.kubeconfig" --root-dir "$node_dir/kubelet/root" \
    --cert-dir "$node_dir/kubelet/pki" --hostname-override "$node_name" --node-ip "$gateway"
  local proxy_health
  proxy_health=$(free_port)
  start kube-proxy "$bin/kube-proxy" --kubeconfig "$run/kube-proxy.kubeconfig" \
    --hostname-override "$node_name" --proxy-mode iptables --cluster-cidr "$pod_cidr" \
    --iptables-localhost-nodeports=false --conntrack-max-per-core 0 \
    --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --metrics-bind-address "127.0.0.1:$(free_port)" --healthz-bind-address "127.0.0.1:$proxy_health"
  cat >"$node_dir/Corefile" <<EOF
.:53 {
    bind $gateway
    errors
    health 127.0.0.1:$(free_port "$(<"$run/apiserver.port")")
    ready 127.0.0.1:$(free_port "$(<"$run/apiserver.port")")
    loadbalance
    cache 5
    # Cluster names only: pods get no answer for the outside world (nothing leaves this machine).
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $run/coredns.kubeconfig sagashop-local
        pods insecure
    }
}
EOF
  start coredns "$coredns_bin" -conf "$node_dir/Corefile"

  local kubectl=("$bin/kubectl" --kubeconfig "$run/kubeconfig")
  wait_for kubelet 120 "${kubectl[@]}" wait --for=condition=Ready "node/$node_name" --timeout=1s
  # The node lifecycle controller lifts the not-ready taint once the node is Ready.
  wait_for kube-controller-manager 60 node_schedulable
  wait_for coredns 30 node_dns_answers
  wait_for kube-proxy 30 curl -sf "http://127.0.0.1:$proxy_health/healthz"
  node_fence
  node_storage
  say "node $node_name Ready and schedulable after $((SECONDS - started))s (pods $pod_cidr, services $service_cidr, DNS $gateway)"
}

# node_storage: what minikube's storage-provisioner gives a chart: a default StorageClass
# `standard` whose claims bind to volumes in a folder of the node, writable by any pod user (a
# hostPath volume is not chowned to the pod's fsGroup). There is no dynamic provisioner here, so
# KUBE_VOLUMES (default 6) volumes of KUBE_VOLUME_SIZE (default 20Gi) are made up front; `down`
# deletes them with the rest of the cluster.
node_storage() {
  local count=${KUBE_VOLUMES:-6} size=${KUBE_VOLUME_SIZE:-20Gi} i manifest
  manifest='apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Retain
volumeBindingMode: Immediate'
  for ((i = 1; i <= count; i++)); do
    mkdir -p "$node_dir/volumes/pv-$i"
    chmod 1777 "$node_dir/volumes/pv-$i"
    manifest+=$(printf '\n---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {name: local-pv-%s, labels: {sagashop.dev/local-volume: "true"}}\nspec:\n  storageClassName: standard\n  capacity: {storage: %s}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Retain\n  hostPath: {path: %s, type: Directory}\n' "$i" "$size" "$node_dir/volumes/pv-$i")
  done
  "$bin/kubectl" --kubeconfig "$run/kubeconfig" apply -f - <<<"$manifest" >/dev/null ||
    die "could not create the node's StorageClass and volumes"
}

node_schedulable() {
  [[ -z "$("$bin/kubectl" --kubeconfig "$run/kubeconfig" get node "$node_name" -o jsonpath='{.spec.taints}')" ]]
}

# The `kubernetes` Service's name, answered by the cluster DNS (one query, straight to CoreDNS:
# the host's own resolver does not know the cluster).
node_dns_answers() {
  python3 - "$gateway" <<'EOF'
import socket, struct, sys
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
for part in "kubernetes.default.svc.cluster.local".split("."):
    q += bytes([len(part)]) + part.encode()
q += b"\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(q, (sys.argv[1], 53))
r = s.recv(512)
sys.exit(0 if struct.unpack(">H", r[6:8])[0] > 0 else 1)
EOF
}

# node_leftover: the node's bridge exists although no node runs here (no node folder, no
# containerd or kubelet): what a run cut during `scripts/kube up` leaves behind.
node_leftover() {
  [[ ! -d "$node_dir" ]] && ip link show "$bridge" >/dev/null 2>&1 &&
    ! pgrep -x containerd >/dev/null && ! pgrep -x kubelet >/dev/null
}

# node_network_down: the chains the node made and its bridge, removed.
node_network_down() {
  node_chains_down iptables
  node_chains_down ip6tables
  ip link del "$bridge" 2>/dev/null || true
}

# node_down: every pod stopped, every mount, chain, sysctl, bridge and folder put back.
node_down() {
  if node_leftover; then
    say "removing the bridge $bridge and its iptables chains, left behind by a node whose folder is gone"
    node_network_down
    ! ip link show "$bridge" >/dev/null 2>&1 || say "could not remove the bridge $bridge"
    return 0
  fi
  [[ -d "$node_dir" ]] || return 0
  local name pid
  for name in kubelet kube-proxy kube-scheduler coredns; do
    if pid=$(pid_of "$name"); then
      say "stopping $name"
      stop_pid "$pid" "$name" 10
    fi
  done
  if pid_of containerd >/dev/null; then
    local ids
    ids=$(ctr_ tasks ls -q 2>/dev/null || true)
    if [[ -n "$ids" ]]; then
      say "stopping $(wc -w <<<"$ids") containers"
      for id in $ids; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
      for id in $ids; do
        for _ in $(seq 1 20); do
          ctr_ tasks delete "$id" >/dev/null 2>&1 && break
          sleep 0.25
        done
      done
    fi
    for id in $(ctr_ containers ls -q 2>/dev/null || true); do ctr_ containers rm "$id" >/dev/null 2>&1 || true; done
    say "stopping containerd"
    stop_pid "$(pid_of containerd)" containerd 10
  fi
  # Whatever still runs in the pods' cgroups was started by this node.
  local procs
  procs=$(cat /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/pids/kubepods/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/*/*/cgroup.procs 2>/dev/null || true)
  [[ -z "$procs" ]] || kill -KILL $procs 2>/dev/null || true
  # Mounts under the node's folder (overlay root filesystems, tmpfs volumes, network namespaces),
  # deepest first.
  local mounts
  mounts=$(awk -v d="$node_dir" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
  for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "could not unmount $m"; done
  # The pods' cgroups.
  local c
  for c in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$c" ]] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  node_network_down
  if [[ -f "$node_dir/undo.sysctl" ]]; then
    while IFS= read -r line; do sysctl -qw "$line" 2>/dev/null || say "could not restore $line"; done <"$node_dir/undo.sysctl"
  fi
  if [[ -f "$node_dir/undo.paths" ]]; then
    while IFS= read -r p; do [[ -n "$p" ]] && rm -rf "$p"; done <"$node_dir/undo.paths"
  fi
  rm -rf "$node_dir"
}

# node_chains_down IPTABLES: the chains kubelet, kube-proxy, the CNI plugins and node_network
# made (KUBE-*, CNI-*, SAGASHOP-*), and every rule that jumps to them.
node_chains_down() {
  local tool=$1 table rule chain
  command -v "$tool" >/dev/null 2>&1 || return 0
  for table in filter nat mangle raw; do
    "$tool" -t "$table" -S >/dev/null 2>&1 || continue
    while IFS= read -r rule; do
      # shellcheck disable=SC2086 # the rule's words, as iptables -S printed them
      eval "$tool -t $table -D ${rule#-A }" 2>/dev/null || true
    done < <("$tool" -t "$table" -S | grep -E -- '^-A .* -j (KUBE-|CNI-|SAGASHOP-)')
    for chain in $("$tool" -t "$table" -S | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-|SAGASHOP-)/ { print $2 }'); do
      "$tool" -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $("$tool" -t "$table" -S | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-|SAGASHOP-)/ { print $2 }'); do
      "$tool" -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

node_status() {
  local name pid
  for name in containerd kubelet kube-scheduler kube-proxy coredns; do
    if pid=$(pid_of "$name"); then
      printf '%-24s running  pid %-8s log %s\n' "$name" "$pid" "$run/$name.log"
    elif [[ -f "$run/$name.log" ]]; then
      printf '%-24s stopped  last log %s\n' "$name" "$run/$name.log"
    fi
  done
  if pid_of kubelet >/dev/null && pid_of kube-apiserver >/dev/null; then
    "$bin/kubectl" --kubeconfig "$run/kubeconfig" get nodes -o wide 2>/dev/null || true
  fi
}
