getent group peerstash >/dev/null || groupadd -r peerstash
sysctl -q -p /usr/lib/sysctl.d/60-peerstash.conf >/dev/null 2>&1 || true
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    # Enabled, not started: it starts once /etc/peerstash/peerstash.toml has a peer id.
    [ "$1" -eq 1 ] && systemctl enable peerstash.service >/dev/null 2>&1 || true
fi
if [ "$1" -eq 1 ]; then
    echo "peerstash: set a unique peer.id (and the quota and folders to watch) in"
    echo "peerstash: /etc/peerstash/peerstash.toml, then: systemctl start peerstash"
fi
