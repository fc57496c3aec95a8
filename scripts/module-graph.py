#!/usr/bin/env python3
"""Prints embedflow's module graph: the `use` edges between modules (read from `crate::` and
`super::` paths outside comments and tests) and the import circles (strongly connected
components), per module and per top-level stage.

    python3 scripts/module-graph.py [src] [--edges]
"""
import collections
import os
import re
import sys


def modules(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, root)[:-3].split("/")
                if parts[-1] in ("mod", "lib", "main"):
                    parts = parts[:-1]
                files["::".join(parts)] = open(path).read()
    return files


def edges_of(files):
    known = set(files)

    def resolve(path):
        segments = path.split("::")
        for i in range(len(segments), 0, -1):
            candidate = "::".join(segments[:i])
            if candidate in known:
                return candidate
        return None

    edges = collections.defaultdict(set)
    for module, source in files.items():
        source = re.split(r"#\[cfg\(test\)\]\s*mod tests", source)[0]
        source = "\n".join(l for l in source.splitlines() if not l.strip().startswith("//"))
        paths = [m.group(1) for m in re.finditer(r"crate::((?:[a-z_][a-z0-9_]*)(?:::[a-z_][a-z0-9_]*)*)", source)]
        base = module.split("::")[:-1]
        paths += ["::".join(base + [m.group(1)]) for m in re.finditer(r"\bsuper::((?:[a-z_][a-z0-9_]*)(?:::[a-z_][a-z0-9_]*)*)", source)]
        for path in paths:
            target = resolve(path)
            # A child naming its ancestors is not an edge up the chain.
            if target and target != module and not module.startswith(target + "::"):
                edges[module].add(target)
    return edges


def circles(nodes, edges):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = args[0] if args else "src"
    files = modules(root)
    edges = edges_of(files)
    print(f"{len(files)} modules, {sum(len(e) for e in edges.values())} edges")
    for c in circles(set(files), edges):
        print(f"circle of {len(c)} modules: {', '.join(c)}")
    stages = collections.defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            if a.split("::")[0] != b.split("::")[0]:
                stages[a.split("::")[0]].add(b.split("::")[0])
    for c in circles({m.split("::")[0] for m in files}, stages):
        print(f"circle of {len(c)} top-level stages: {', '.join(c)}")
    largest = sorted(((len(s.splitlines()), m) for m, s in files.items()), reverse=True)[:3]
    print("largest modules: " + ", ".join(f"{m} ({n} lines)" for n, m in largest))
    if "--edges" in sys.argv:
        for module in sorted(edges):
            print(f"{module} -> {', '.join(sorted(edges[module]))}")


if __name__ == "__main__":
    main()
