getent group peerstash >/dev/null || groupadd -r peerstash
if ! sysctl -q -p /usr/lib/sysctl.d/60-peerstash.conf >/dev/null 2>&1; then
    echo "peerstash: could not apply /usr/lib/sysctl.d/60-peerstash.conf (net.core.rmem_max = 8 MB):" >&2
    echo "peerstash: run 'sysctl --system' as root (in a container, on its host); until then a burst" >&2
    echo "peerstash: of chunks may overflow the receive buffers and be sent again" >&2
fi
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
    echo "peerstash: set a unique peer.id (and the quota and folders to watch) in"
    echo "peerstash: /etc/peerstash/peerstash.toml, then: systemctl start peerstash"
fi
