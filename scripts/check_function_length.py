#!/usr/bin/env python3
"""The function-length check (ctest `habits.function_length`): no function
body in src/ and tools/ is longer than 100 lines (issue #17: split long
functions into named steps). A light C++ scanner, not a parser: it finds lines
ending in `{` that close a parameter list (not control flow, not a lambda),
then counts lines to the matching brace, ignoring braces in strings, character
literals and comments.

  scripts/check_function_length.py [--max N] [DIR ...]   # default: src tools
"""
import os
import re
import sys

SIGNATURE = re.compile(
    r'\)\s*(const)?\s*(noexcept)?\s*(override)?\s*(->\s*[\w:<>,\s*&]+)?\s*\{$')
CONTROL = re.compile(r'^\s*(\}\s*)?(else\s+)?(if|for|while|switch|catch|do)\b')
LAMBDA = re.compile(r'\[[^\]]*\]\s*\(')


def code_only(line, in_comment):
    """The line without string/char literals and comments; block-comment state."""
    out = []
    i = 0
    while i < len(line):
        if in_comment:
            end = line.find('*/', i)
            if end < 0:
                return ''.join(out), True
            i = end + 2
            in_comment = False
            continue
        c = line[i]
        if line.startswith('//', i):
            break
        if line.startswith('/*', i):
            in_comment = True
            i += 2
            continue
        if c in '"\'':
            j = i + 1
            while j < len(line) and line[j] != c:
                j += 2 if line[j] == '\\' else 1
            out.append(c + c)
            i = j + 1
            continue
        out.append(c)
        i += 1
    return ''.join(out), in_comment


def long_functions(path, limit):
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = f.read().split('\n')
    code = []
    in_comment = False
    for line in lines:
        text, in_comment = code_only(line, in_comment)
        code.append(text.rstrip())
    found = []
    i = 0
    while i < len(code):
        s = code[i]
        if (s.endswith('{') and SIGNATURE.search(s) and not CONTROL.match(s)
                and not LAMBDA.search(s)):
            depth = 0
            j = i
            while j < len(code):
                depth += code[j].count('{') - code[j].count('}')
                if depth <= 0:
                    break
                j += 1
            body = j - i - 1
            if body > limit:
                found.append((path, i + 1, body))
            i = j + 1
            continue
        i += 1
    return found


def main(argv):
    limit = 100
    if argv[:1] == ['--max']:
        limit = int(argv[1])
        argv = argv[2:]
    roots = argv or ['src', 'tools']
    found = []
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for name in sorted(files):
                if name.endswith(('.cpp', '.cc', '.h', '.hpp')):
                    found += long_functions(os.path.join(dirpath, name), limit)
    for path, line, body in found:
        print(f'{path}:{line}: function body of {body} lines (at most {limit})')
    if found:
        print(f'function length: {len(found)} function(s) over {limit} lines; '
              'split them into named steps')
        return 1
    print(f'function length: every function in {" ".join(roots)} is at most '
          f'{limit} lines')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
