#!/usr/bin/env python3
"""Where the CPU time of a save or a load goes, by phase and by process, from the
`perf record` files `bench_torch --perf DIR` writes (client and server sampled
together, user and kernel code). Prints CPU seconds and shares per phase.

    build/bench/bench_torch --runs 1 --workload gpt2 --no-python --perf /tmp/prof
    python3 bench/perf_phases.py /tmp/prof/*.data

Phases are told apart by the sampled function (and its library): a sample in
xxHash is hashing, in copy_folio_from_iter_atomic a write into the page cache,
and so on (PHASES below, first match wins). Flat profiles: a kernel routine
shared by several paths (a user copy) is counted where its name puts it. CPU
time only: waiting (for the disk, for the other side) shows as the gap between
CPU seconds and wall time.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys

# (phase, regular expression over "symbol (library)"), first match wins.
PHASES = [
    ("hashing (xxHash)", r"XXH|libxxhash"),
    ("tensor statistics", r"StatsAccumulator|ComputeStats|TensorStats"),
    ("protobuf (de)serialisation", r"google::protobuf|libprotobuf|_InternalSerialize|_InternalParse"),
    ("RocksDB (SST build, ingest, reads)", r"rocksdb::|librocksdb"),
    ("LibTorch", r"\bat::|\bc10::|\btorch::|libtorch|libc10"),
    ("memory copies (user space)", r"__memmove|__memcpy|\bmemcpy\b|\bmemmove\b"),
    ("writes into the page cache (kernel)",
     r"copy_folio_from_iter|generic_perform_write|ext4_da_|ext4_es_|ext4_check_map|"
     r"block_commit_write|block_write_|mpage_|ext4_buffered|"
     r"mark_buffer_dirty|__block_commit|create_empty_buffers|balance_dirty"),
    ("page cache: mapped reads, lookups (kernel)", r"filemap_|__filemap|folio_|readahead"),
    ("fsync, writeback, block I/O (kernel)",
     r"jbd2|ext4_sync|blk_|submit_bio|bio_|iomap|writeback|virtblk|ext4_writepages|"
     r"ext4_io_|file_write_and_wait|__writeback"),
    ("socket send/receive, loopback TCP (kernel)",
     r"_copy_to_iter|_copy_from_iter|copy_user|tcp_|skb|sock_|__sys_sendmsg|__sys_recvmsg|"
     r"sendmsg|recvmsg|\bip_|__ip_|net_rx|__netif|netif_|napi|loopback|__dev_queue_xmit|"
     r"dev_hard_start|handle_softirqs|__local_bh|do_softirq|inet_|csum_|ep_poll|epoll"),
    ("gRPC, HTTP/2 (user space)", r"grpc|gpr_|libgrpc|libgpr|chttp2|hpack"),
    ("memory allocation, page faults",
     r"clear_page|page_fault|handle_mm_fault|do_anonymous|__alloc_pages|alloc_pages|"
     r"get_page_from_freelist|kmem_cache|slab|malloc|_int_free|\bfree\b|cfree|tcache|"
     r"__memcg|mem_cgroup|lru_|folio_add|rmqueue|free_unref|zap_|unmap_|release_pages|"
     r"do_user_addr_fault|exc_page_fault|asm_exc_page_fault|mmap|munmap|madvise"),
    ("scheduling, locks, syscalls (kernel)",
     r"finish_task_switch|_raw_spin|schedule|futex|entry_SYSCALL|syscall|irqentry|"
     r"__x64_sys|do_syscall|native_|clock_|hrtimer|__wake_up|try_to_wake|ttwu"),
]


def classify(symbol: str, library: str) -> str:
    text = f"{symbol} ({library})"
    for phase, pattern in PHASES:
        if re.search(pattern, text):
            return phase
    return "other"


LINE = re.compile(r"^\s*(?P<comm>.+?)\s+(?P<pid>\d+)/(?P<tid>\d+)\s+(?P<period>\d+)\s+"
                  r"(?P<ip>[0-9a-f]+)\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")


def summarise(path: str, top: int) -> None:
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,pid,tid,period,ip,sym,dso"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"{path}: perf script failed: {out.stderr.strip()[-300:]}")
        return
    seconds = collections.defaultdict(float)  # (process, phase) -> s
    symbols = collections.defaultdict(float)  # (process, symbol) -> s
    comms = collections.defaultdict(collections.Counter)  # pid -> thread names seen
    for line in out.stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pid, tid = m["pid"], m["tid"]
        comms[pid][m["comm"]] += 1
        s = int(m["period"]) / 1e9  # cpu-clock periods are nanoseconds
        sym = m["sym"] or m["ip"]
        seconds[(pid, classify(sym, m["dso"]))] += s
        symbols[(pid, f"{sym} ({m['dso'].rsplit('/', 1)[-1]})")] += s
    # A process by the name most of its samples carry (threads inherit it
    # unless they rename themselves).
    names = {pid: c.most_common(1)[0][0] for pid, c in comms.items()}
    print(f"== {path}")
    for pid in sorted({p for p, _ in seconds}, key=lambda p: names.get(p, p)):
        total = sum(v for (p, _), v in seconds.items() if p == pid)
        print(f"  {names.get(pid, pid)} (pid {pid}): {total:.2f} CPU s")
        phases = sorted(((v, ph) for (p, ph), v in seconds.items() if p == pid), reverse=True)
        for v, ph in phases:
            if v / total >= 0.005:
                print(f"    {ph:45} {v:6.2f} s  {100 * v / total:5.1f}%")
        if top:
            print("    top functions:")
            best = sorted(((v, sy) for (p, sy), v in symbols.items() if p == pid), reverse=True)
            for v, sy in best[:top]:
                print(f"      {v:6.2f} s  {sy[:90]}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="perf.data files (bench_torch --perf)")
    parser.add_argument("--top", type=int, default=8, help="functions listed per process")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("perf_phases: perf not found (Debian package linux-perf)", file=sys.stderr)
        return 2
    for path in args.files:
        summarise(path, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
