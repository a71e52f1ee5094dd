#!/usr/bin/env python3
"""Draws the module dependencies of src/ (who names whom through crate::/super::/self::) and
finds circles. Usage: scripts/deps.py [--files] [--dot]"""
import os, re, sys

SRC = os.path.join(os.path.dirname(__file__), '..', 'src')

def modpath(rel):
    parts = rel[:-3].split('/')
    if parts[0] == 'bin':
        return ['bin', parts[1]]
    if parts[-1] in ('mod', 'lib'):
        parts = parts[:-1]
    return parts

def strip(text):
    """The code without comments, string and char literals, and without a trailing
    `#[cfg(test)] mod tests { ... }`."""
    out = []; i = 0; n = len(text)
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            j = text.find('\n', i); i = n if j < 0 else j
        elif text.startswith('/*', i):
            j = text.find('*/', i + 2); i = n if j < 0 else j + 2
        elif c == 'r' and re.match(r'r#*"', text[i:]) and (i == 0 or not (text[i-1].isalnum() or text[i-1] == '_')):
            m = re.match(r'r(#*)"', text[i:]); end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0))); i = n if j < 0 else j + len(end); out.append('""')
        elif c == 'b' and text.startswith('b"', i) and (i == 0 or not (text[i-1].isalnum() or text[i-1] == '_')):
            i += 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            i = j + 1; out.append('""')
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:]); i += len(m.group(0)); out.append("' '")
        else:
            out.append(c); i += 1
    text = ''.join(out)
    m = re.search(r'#\[cfg\(test\)\]\s*mod tests\s*\{', text)
    if m:
        text = text[:m.start()]
    return text

def expand(prefix, body):
    """use a::{b, c::{d}} -> [a::b, a::c::d]"""
    out = []
    depth = 0; cur = ''; items = []
    for ch in body:
        if ch == '{': depth += 1
        if ch == '}': depth -= 1
        if ch == ',' and depth == 0:
            items.append(cur); cur = ''
        else:
            cur += ch
    items.append(cur)
    for it in items:
        it = it.strip()
        if not it: continue
        m = re.match(r'^([\w:]*?)::\{(.*)\}$', it, re.S)
        if m:
            out += expand(prefix + [p for p in m.group(1).split('::') if p], m.group(2))
        else:
            out.append(prefix + [p for p in it.split(' as ')[0].split('::') if p])
    return out

files = {}
for root, _, names in os.walk(SRC):
    for n in names:
        if n.endswith('.rs'):
            rel = os.path.relpath(os.path.join(root, n), SRC)
            files[rel] = modpath(rel)
mods = {tuple(v): k for k, v in files.items()}

def resolve(me, path):
    # me: module path list of current file; path: list of segments
    if not path: return None
    if path[0] == 'crate' or path[0] == 'peerstash':
        p = path[1:]
    elif path[0] == 'super':
        base = list(me)
        while path and path[0] == 'super':
            base = base[:-1]; path = path[1:]
        p = base + path
    elif path[0] == 'self':
        p = list(me) + path[1:]
    else:
        return None
    # longest prefix that is a module
    for i in range(len(p), 0, -1):
        if tuple(p[:i]) in mods:
            return tuple(p[:i])
    return None

edges = {}
for rel, me in files.items():
    if not me or rel.endswith("tests.rs"):
        continue
    text = strip(open(os.path.join(SRC, rel)).read())
    targets = set()
    for m in re.finditer(r'\buse\s+((?:crate|super|self|peerstash)(?:::\w+)*)(?:::\{(.*?)\})?\s*;', text, re.S):
        head = m.group(1).split('::')
        if m.group(2) is not None:
            for p in expand(head, m.group(2)):
                targets.add(resolve(me, p))
        else:
            targets.add(resolve(me, head))
    for m in re.finditer(r'\b((?:crate|super|peerstash)(?:::\w+)+)', text):
        targets.add(resolve(me, m.group(1).split('::')))
    targets.discard(None)
    targets.discard(tuple(me))
    edges[tuple(me)] = targets

def level(m, files_mode):
    if files_mode: return m
    # group: by top module
    if m[0] == 'bin': return tuple(m)
    return m[:1]

files_mode = '--files' in sys.argv
g = {}
for a, ts in edges.items():
    la = level(a, files_mode)
    g.setdefault(la, set())
    for b in ts:
        lb = level(b, files_mode)
        if lb != la and not (la[:len(lb)] == lb and files_mode is False):
            g[la].add(lb)

# strongly connected components (Tarjan)
index = {}; low = {}; stack = []; on = set(); sccs = []; counter = [0]
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in g.get(v, ()):
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
for v in list(g):
    if v not in index: strong(v)

name = lambda m: '::'.join(m)
if '--dot' in sys.argv:
    print('digraph src {')
    for a in sorted(g):
        for b in sorted(g[a]):
            print(f'  "{name(a)}" -> "{name(b)}";')
    print('}')
else:
    for a in sorted(g):
        print(f'{name(a):28} -> {", ".join(name(b) for b in sorted(g[a]))}')
circles = [c for c in sccs if len(c) > 1]
for c in circles:
    cs = set(c)
    print('CIRCLE:', ' '.join(sorted(name(m) for m in c)))
    for a in sorted(c):
        for b in sorted(g[a] & cs):
            print(f'    {name(a)} -> {name(b)}')
sys.exit(1 if circles else 0)
