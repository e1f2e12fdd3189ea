#!/bin/busybox sh
# /init of the test guest: mount what the agent needs, then run the tests, a demo, the
# benchmark or a shell.
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
# Loopback, for chronyd and the test NTP server; the guest has no other network.
ip link set lo up
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
# A PTP hardware clock (e1000e: /dev/ptp0) and the PPS line discipline (pps-ldisc).
for m in /lib/modules/*.ko; do insmod "$m" || echo "TG-GUEST insmod $m failed"; done
echo "TG-GUEST kernel $(uname -r) lsm=$(cat /sys/kernel/security/lsm)"
mode=$(sed -n 's/.*tg\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
# libtest's name filter (`tg.filter=clock::`: one area); none runs every test.
filter=$(sed -n 's/.*tg\.filter=\([^ ]*\).*/\1/p' /proc/cmdline)
case "$mode" in
test)
    # One test at a time: they share the clock, the kernel and the agent's paths.
    tg-guest-tests --test-threads=1 --color never $filter
    echo "TG-SUITE-EXIT $?"
    ;;
demo)
    # Every test with what it saw, and each agent's log and records.
    TG_SHOW_AGENT=1 tg-guest-tests --test-threads=1 --color never --nocapture
    ;;
bench)
    tg-vm-bench
    echo "TG-SUITE-EXIT $?"
    ;;
*)
    timeguard run --policy /etc/timeguard/policy.yaml --audit-stdout >/tmp/events.jsonl 2>/tmp/agent.log &
    sleep 1
    cat /tmp/agent.log
    setsid cttyhack sh -l
    ;;
esac
poweroff -f
