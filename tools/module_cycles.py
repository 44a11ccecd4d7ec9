#!/usr/bin/env python3
"""Reads the module graph `cargo modules dependencies` prints (DOT) on stdin and fails
when modules of the crate import each other in a circle.

cargo-modules' own `--acyclic` works on items, so a type and its own methods already
make a "circle"; this collapses every item into the module that defines it and looks
for circles between modules. An import between a module and one of its descendants is
not counted: a parent that re-exports its children (`foo.rs` with `pub use
foo::bar::Thing`) while they use its shared types is one room, not two. Only what
`use` declarations name shows in the graph.
"""

import collections
import re
import sys


def main() -> int:
    text = sys.stdin.read()
    modules = set(re.findall(r'^\s+"([^"]+)" \[label=[^\n]*// "(?:mod|crate)" node', text, re.M))
    if not modules:
        print("module_cycles: no module in the graph on stdin", file=sys.stderr)
        return 2
    uses = re.findall(r'^\s+"([^"]+)" -> "([^"]+)" \[label="uses"', text, re.M)

    def module_of(node: str) -> str:
        while node not in modules and "::" in node:
            node = node.rsplit("::", 1)[0]
        return node

    graph: dict[str, set[str]] = collections.defaultdict(set)
    why: dict[tuple[str, str], str] = {}
    for source, target in uses:
        a, b = module_of(source), module_of(target)
        if a == b or a.startswith(b + "::") or b.startswith(a + "::"):
            continue
        graph[a].add(b)
        why.setdefault((a, b), f"{source} uses {target}")

    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))

    for circle in circles:
        members = set(circle)
        print("import circle between modules: " + ", ".join(circle))
        for (a, b), reason in sorted(why.items()):
            if a in members and b in members:
                print(f"  {reason}")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
