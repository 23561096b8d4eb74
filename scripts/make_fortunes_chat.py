#!/usr/bin/env python3
"""Writes recipes/data/fortunes-chat.jsonl: chat rows made from the Debian
`fortunes` corpus (/usr/share/games/fortunes), for recipes/chat-jsonl.yaml.

Each row asks for a fortune about a topic (the fortune file's name) and the
assistant answers with one fortune of that file: the first 40 fortunes of at
most 240 characters of each topic below, in file order. Deterministic: the
same corpus gives the same file.

    /usr/bin/python3 scripts/make_fortunes_chat.py [OUT]
"""
import json
import sys

TOPICS = ["computers", "science", "food", "education", "work", "law",
          "medicine", "linux"]
PER_TOPIC = 40
MAX_CHARS = 240


def fortunes(topic):
    with open(f"/usr/share/games/fortunes/{topic}", encoding="utf-8",
              errors="replace") as f:
        for entry in f.read().split("\n%\n"):
            entry = entry.strip("\n")
            if entry and len(entry) <= MAX_CHARS and "\t" not in entry:
                yield entry


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "recipes/data/fortunes-chat.jsonl"
    rows = []
    for topic in TOPICS:
        for i, text in enumerate(fortunes(topic)):
            if i == PER_TOPIC:
                break
            rows.append({"messages": [
                {"role": "user", "content": f"Tell me a fortune about {topic}."},
                {"role": "assistant", "content": text}]})
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{out}: {len(rows)} rows")


if __name__ == "__main__":
    main()
