getent group peerstash >/dev/null || groupadd -r peerstash
# --- rmem_max: packaging/check runs this block alone (with a fake file and commands).
# Room for bursts of chunks (/usr/lib/sysctl.d/60-peerstash.conf). `sysctl -p` exits 0 where
# the value cannot be set (a container): what counts is the value in effect afterwards. A
# higher value set by the admin is left alone.
rmem_file=/proc/sys/net/core/rmem_max
rmem_want=8388608
rmem=$(cat "$rmem_file" 2>/dev/null || true)
case "$rmem" in ''|*[!0-9]*) rmem=0 ;; esac
if [ "$rmem" -lt "$rmem_want" ]; then
    sysctl -q -p /usr/lib/sysctl.d/60-peerstash.conf >/dev/null 2>&1 || true
    rmem=$(cat "$rmem_file" 2>/dev/null || true)
    case "$rmem" in ''|*[!0-9]*) rmem="not visible here" ;; esac
fi
if [ "$rmem" = "not visible here" ] || [ "$rmem" -lt "$rmem_want" ]; then
    # A container cannot change it: the kernel keeps one value for the whole machine (a
    # container's network namespace shows the host's read-only, or not at all).
    # systemd-detect-virt (the package depends on systemd) knows them all; the files are
    # what it reads for the common ones, for a system without it.
    if command -v systemd-detect-virt >/dev/null 2>&1; then
        container=$(systemd-detect-virt --container 2>/dev/null || true)
        [ "$container" != none ] || container=
    elif [ -s /run/systemd/container ]; then container=$(head -n1 /run/systemd/container)
    elif [ -e /.dockerenv ]; then container=docker
    elif [ -e /run/.containerenv ]; then container=podman
    else container=
    fi
    if [ -n "$container" ]; then
        echo "peerstash: could not apply net.core.rmem_max = $rmem_want (it is $rmem): this is a container ($container), which cannot change it; on the host, as root: 'sysctl -w net.core.rmem_max=$rmem_want' (and that line in a file of /etc/sysctl.d/), or bursts of chunks may be dropped and sent again" >&2
    else
        echo "peerstash: could not apply net.core.rmem_max = $rmem_want (it is $rmem): as root, 'sysctl -w net.core.rmem_max=$rmem_want' (60-peerstash.conf sets it at boot unless a later sysctl.d file lowers it), or bursts of chunks may be dropped and sent again" >&2
    fi
fi
# --- rmem_max end
# The master key, made once (the unit keeps /etc read-only); never replaced nor removed.
if [ ! -e /etc/peerstash/master.key ]; then
    mkdir -p /etc/peerstash
    peerstash keygen /etc/peerstash/master.key >/dev/null
    echo "peerstash: made /etc/peerstash/master.key: copy it somewhere safe (not on this"
    echo "peerstash: computer); without it, encrypted backups cannot be read"
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    # Enabled, not started: it starts once /etc/peerstash/peerstash.toml has a peer id.
    [ "$1" -eq 1 ] && systemctl enable peerstash.service >/dev/null 2>&1 || true
    # The weekly scrub of the hosted chunks (it does nothing while the daemon is stopped).
    systemctl enable --now peerstash-scrub.timer >/dev/null 2>&1 || true
fi
if [ "$1" -eq 1 ]; then
    echo "peerstash: set a unique peer.id ('peerstash suggest-id' prints one made from this"
    echo "peerstash: machine's address), the quota and the folders to watch in"
    echo "peerstash: /etc/peerstash/peerstash.toml, then: systemctl start peerstash"
fi
