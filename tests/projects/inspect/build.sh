# Prints what the container was given: capabilities, privileges, limits, network.
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
echo "memory $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo "pids $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"
echo "cpu $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max)"
echo "net $(ls /sys/class/net | tr '\n' ' ')"
echo "user $(id -u)"
