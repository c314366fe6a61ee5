#!/usr/bin/env python3
"""Writes an mbox of N plain-text messages (about 1.8 KB each, distinct Message-IDs) to
stdout, for measuring `hearth import mail` (docs/BENCHMARKS.md):

    python3 scripts/make-mbox.py 20000 > big.mbox
"""
import random
import sys

words = (
    "the of and to in is that it was for on are as with his they at be this from have "
    "or by one had not but what all were when we there can an your which their said if "
    "do will each about how up out them then she many some so these would other into has "
    "more her two like him see time could no make than first been its who now people my "
    "made over did down only way find use may water long little very after words called "
    "just where most know"
).split()

random.seed(1)
out = sys.stdout
for n in range(int(sys.argv[1])):
    body = "\n".join(" ".join(random.choice(words) for _ in range(12)) for _ in range(30))
    out.write(f"From sender{n}@example.org Mon Jan  1 10:00:00 2024\n")
    out.write(
        f"From: Sender {n} <sender{n}@example.org>\nTo: ada@example.org\n"
        f"Subject: message {n} {random.choice(words)}\nDate: Mon, 1 Jan 2024 10:00:00 +0100\n"
        f"Message-ID: <b{n}@example.org>\n\n{body}\n\n"
    )
