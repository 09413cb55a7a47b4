#!/usr/bin/env python3
"""Prints the README's Performance table (markdown) from a postbox-bench
results.json of a `--matrix` run.

Usage: scripts/bench-table.py [target/bench-report/results.json]
"""
import json
import sys

COLUMNS = [
    ("postbox", "sync", "postbox sync"),
    ("postbox", "async", "postbox async"),
    ("postbox-keyless", "sync", "postbox-keyless sync"),
    ("postbox-keyless", "async", "postbox-keyless async"),
    ("nats", "sync", "NATS JetStream"),
    ("redis", "sync", "Redis Streams"),
    ("rabbitmq", "sync", "RabbitMQ Streams"),
]

PUBLISH_ROWS = [
    ("100B x1", "100 B × 1"),
    ("100B x8", "100 B × 8"),
    ("100B x32", "100 B × 32"),
    ("1KiB x1", "1 KiB × 1"),
    ("1KiB x8", "**1 KiB × 8**"),
    ("1KiB x32", "1 KiB × 32"),
]


def rate(records_per_s):
    if records_per_s >= 1e6:
        return f"{records_per_s / 1e6:.2f}M/s"
    return f"{records_per_s / 1e3:.0f}k/s"


def throughput(side, with_p99):
    cell = f"{side['mb_per_s']:.0f} MB/s ({rate(side['records_per_s'])})"
    if with_p99:
        cell += f", p99 {side['latency_us']['p99'] / 1000:.0f} ms"
    return cell


def latencies(side):
    lat = side["latency_us"]
    return " / ".join(f"{lat[k] / 1000:.2f}" for k in ("p50", "p99", "p999")) + " ms"


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "target/bench-report/results.json"
    with open(path) as f:
        rows = json.load(f)["rows"]
    by_key = {(r["system"], r["label"]): r for r in rows if r["outcome"] == "passed"}

    def cell(system, label, render):
        row = by_key.get((system, label))
        return render(row) if row else ""

    lines = [
        "| scenario | " + " | ".join(c[2] for c in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]

    def line(title, label_of, render):
        cells = [cell(s, label_of(d), render) for s, d, _ in COLUMNS]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    for size, title in PUBLISH_ROWS:
        line(title, lambda d: f"publish {size} {d}", lambda r: throughput(r["publish"], True))
    line(
        "**replay of 1 M × 1 KiB**",
        lambda d: "replay 1KiB x8 sync" if d == "sync" else None,
        lambda r: throughput(r["consume"], False),
    )
    line(
        "**1 KiB, 1 producer, fixed 10,000/s**: publish p50 / p99 / p99.9",
        lambda d: "publish 1KiB x1 sync @10000/s" if d == "sync" else None,
        lambda r: latencies(r["publish"]),
    )
    line(
        "the same, publish to delivery",
        lambda d: "pub+sub 1KiB x1 sync @10000/s" if d == "sync" else None,
        lambda r: latencies(r["consume"]),
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
