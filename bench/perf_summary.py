#!/usr/bin/env python3
"""Where eds-proxy's CPU went in one profiled run (bench/run.sh --perf).

Reads `perf report --stdio --no-children --sort dso,symbol` on stdin and prints the share per
kind of work (serde_json, allocator, kernel, TLS, ...) and then the top symbols. A symbol is
counted in the first kind whose pattern matches it.
"""
import collections
import re
import sys

KINDS = [
    ("serde_json (parse, skip, raw values)", r"serde_json|serde_core|ScanVisitor|ScanSeed|scan_object|response::Key|strict_json|jiter"),
    ("allocator (malloc, free, realloc)", r"malloc|_int_free|cfree|realloc|unlink_chunk|malloc_consolidate|_rjem_|je_|sdallocx|tcache"),
    ("memmove / memcmp", r"memmove|memcmp|memcpy|memset"),
    ("TLS (ring AES-GCM, rustls)", r"ring_core|rustls|aes_gcm"),
    ("kernel (syscalls, wake-ups, copies)", r"\[k\]|\[kernel"),
    ("formatting (fmt::write, format!)", r"fmt::|format_inner|format_escaped|write_str"),
    ("logging and redaction", r"redact|anstream|env_logger|logging"),
    ("Pingora and tokio", r"pingora|tokio|mio"),
    ("token, SHA-256, HMAC", r"sha2|hmac|jsonwebtoken"),
]


def main():
    kinds = collections.Counter()
    top = []
    for line in sys.stdin:
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+(.*)", line)
        if not m:
            continue
        share, dso = float(m.group(1)), m.group(2)
        symbol = re.sub(r"(\s+-)*\s*$", "", m.group(3))
        top.append((share, symbol))
        for name, pattern in KINDS:
            if re.search(pattern, f"{dso} {symbol}"):
                kinds[name] += share
                break
        else:
            kinds["other"] += share
    for name, share in kinds.most_common():
        print(f"{share:6.1f}%  {name}")
    print("top symbols:")
    for share, symbol in top[:15]:
        print(f"{share:6.1f}%  {symbol}")


if __name__ == "__main__":
    main()
