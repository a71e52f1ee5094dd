if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    [ "$1" -ge 1 ] && systemctl try-restart peerstash.service >/dev/null 2>&1 || true
fi
