#!/bin/sh
# Installs those of the given Debian packages that are missing, and leaves no new service
# enabled or running: openssh-server, for one, would enable and start the host's ssh.service on
# port 22, while the tests start their own sshd on 127.0.0.1. Needs the Debian package registry.
set -eu
missing=""
for package in "$@"; do
	dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing="$missing $package"
done
[ -n "$missing" ] || exit 0
echo "installing:$missing"
enabled() { systemctl list-unit-files --state=enabled --no-legend 2>/dev/null | awk '{print $1}' | sort; }
before=$(mktemp)
enabled >"$before"
# policy-rc.d keeps the packages' scripts from starting services; an existing one is left alone.
policy=/usr/sbin/policy-rc.d
ours=""
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	ours=yes
fi
trap 'rm -f "$before"; [ -z "$ours" ] || rm -f "$policy"' EXIT
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
for unit in $(enabled | comm -13 "$before" -); do
	echo "disabling $unit, which the install enabled"
	systemctl disable --now "$unit" 2>/dev/null || systemctl disable "$unit"
done
