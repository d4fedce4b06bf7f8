#!/usr/bin/env python3
"""Summarises `RMTEST_VMM_STRACE=DIR cargo nextest run -p rmachine-vmm` (rmachine-vmm under
strace -f -ff with --seccomp-log): per thread kind, the system calls made after the thread installed
its seccomp filter (its seccomp() line), with ioctl requests, socket domains, fcntl commands,
madvise advice, prctl options and clone flags. Usage: seccomp_audit.py DIR"""
import collections, os, re, sys

root = sys.argv[1]
kinds = collections.defaultdict(lambda: collections.defaultdict(set))
line_re = re.compile(r'^(?:\[pid\s+\d+\] )?([a-z0-9_]+)\((.*)')
def kind_of(name):
    if name is None: return 'main'
    if name.startswith('vcpu'): return 'vcpu'
    if name.startswith('vhost-user'): return 'vcpu(watchdog)'
    return name
for run in sorted(os.listdir(root)):
    d = os.path.join(root, run)
    if not os.path.isdir(d): continue
    files = [f for f in os.listdir(d) if f.startswith('t.')]
    tids = sorted(int(f[2:]) for f in files)
    for tid in tids:
        lines = open(os.path.join(d, f't.{tid}'), errors='replace').read().splitlines()
        name = None
        for l in lines:
            m = re.match(r'prctl\(PR_SET_NAME, "([^"]*)"', l)
            if m: name = m.group(1); break
        if any(l.startswith('execve(') for l in lines):
            if not any('rmachine-vmm' in l for l in lines if l.startswith('execve(')):
                continue
            name = None
        k = kind_of(name)
        filtered = k == 'vcpu(watchdog)'
        for l in lines:
            m = line_re.match(l)
            if not m: continue
            sc, args = m.group(1), m.group(2)
            if sc == 'seccomp' and 'SECCOMP_SET_MODE_FILTER' in args:
                filtered = True; continue
            if not filtered: continue
            detail = ''
            a = args.split(', ')
            if sc == 'ioctl' and len(a) > 1: detail = a[1].rstrip(')')
            elif sc in ('socket',): detail = a[0]
            elif sc == 'fcntl' and len(a) > 1: detail = a[1].rstrip(')')
            elif sc == 'madvise' and len(a) > 2: detail = a[2].split(')')[0]
            elif sc == 'prctl': detail = a[0].rstrip(')')
            elif sc == 'clone': detail = ' '.join(x for x in a if x.startswith('flags='))
            elif sc == 'clone3': detail = args[:80]
            elif sc in ('mmap',) and len(a) > 3: detail = a[2] + ' ' + a[3]
            elif sc == 'mprotect' and len(a) > 2: detail = a[2].split(')')[0]
            elif sc in ('tgkill', 'kill') and len(a) > 2: detail = a[2].split(')')[0]
            elif sc == 'rt_sigprocmask': detail = a[0]
            elif sc == 'futex' and len(a) > 1: detail = a[1]
            elif sc in ('epoll_ctl',) and len(a) > 1: detail = a[1]
            elif sc in ('openat',): detail = a[-1].split(')')[0] if len(a) > 2 else ''
            elif sc in ('setsockopt', 'getsockopt') and len(a) > 2: detail = a[1] + ' ' + a[2]
            elif sc == 'shutdown' and len(a) > 1: detail = a[1].split(')')[0]
            elif sc in ('sendmsg','recvmsg','sendto','recvfrom') and len(a) > 0: detail = args.rsplit(', ', 1)[-1].split(')')[0]
            kinds[k][sc].add(detail)
for k in sorted(kinds):
    print(f'== {k}')
    for sc in sorted(kinds[k]):
        d = sorted(x for x in kinds[k][sc] if x)
        print(f'  {sc}: {", ".join(d)[:300]}')
