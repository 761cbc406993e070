#!/usr/bin/env python3
"""Ratio table of magsd vs the PyTorch anchor from the JSON lines of scripts/gpu-bench.sh.

Usage: bench-table.py bench.jsonl [checks.jsonl]. Prints Markdown: for each precision the anchor's
runs (A), magsd's median and min–max over its trials (B), and B / median(A).
"""
import json
import statistics
import sys


def lines(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def key(r):
    amp = r.get("amp_bf16", r.get("amp", False))
    cl = r.get("channels_last", False)
    return ("bf16 + channels-last" if amp and cl else "bf16" if amp else "fp32") + (" + CUDA graph" if r.get("cuda_graph") else "")


def main():
    rows = lines(sys.argv[1])
    anchors, ours = {}, {}
    for r in rows:
        if r.get("impl") == "magsd":
            ours.setdefault(key(r), {}).update({r["bench"]: r})
        elif "train_img_s" in r:
            anchors.setdefault(key(r), []).append(r)
    print("| precision | measurement | PyTorch eager (runs) | magsd median (min–max) | ratio |")
    print("|---|---|---|---|---|")
    for k, m in ours.items():
        base = k.replace(" + CUDA graph", "")
        a = anchors.get(base, [])
        for bench, field in [("train_step", "train_img_s"), ("inference", "infer_img_s"), ("eval_step", "eval_step_img_s")]:
            r = m.get(bench)
            if not r:
                continue
            av = [x[field] for x in a if field in x]
            amed = statistics.median(av) if av else None
            ratio = f"{r[field] / amed:.2f}" if amed else "n/a"
            print(f"| {k} | {field} | {', '.join(f'{v:.0f}' for v in av) or 'n/a'} | "
                  f"{r[field]:.0f} ({r.get(field + '_min', r[field]):.0f}–{r.get(field + '_max', r[field]):.0f}) | {ratio} |")
    if len(sys.argv) > 2:
        for r in lines(sys.argv[2]):
            if r.get("bench") == "graph_parity":
                floor = r.get("max_rel_diff_eager_repeat")
                floor = f"; two eager runs: {floor:.2e}" if floor is not None else ""
                print(f"\nCUDA graph vs eager, {key(r)}: 20 steps, max relative loss difference {r['max_rel_diff']:.2e}{floor}")
            if r.get("bench") == "loader":
                st = ", ".join(f"{k} {v:.3f}" for k, v in r["stage_ms_per_image"].items())
                print(f"\nLoader ({r['cores']} cores, {r['rayon_threads']} threads): {r['images_per_s']:.0f} img/s, "
                      f"1 thread {r['images_per_s_1_thread']:.0f} img/s, serial fraction {r['serial_fraction']:.3f}; "
                      f"ms per image: {st}")


main()
