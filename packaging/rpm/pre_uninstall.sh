if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now peerstash.service >/dev/null 2>&1 || true
    systemctl disable --now peerstash-scrub.timer >/dev/null 2>&1 || true
fi
