"""Virga python3 classic runtime: reads the whole request from stdin, calls
function/handler.py's handle(req) with it as a string and prints what it returns."""

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
for extra in (os.path.join(ROOT, "python"), os.path.join(ROOT, "function"), ROOT):
    if os.path.isdir(extra) and extra not in sys.path:
        sys.path.insert(0, extra)

from function import handler  # noqa: E402


def main():
    req = sys.stdin.read()
    ret = handler.handle(req)
    if ret is not None:
        print(ret)


if __name__ == "__main__":
    main()
