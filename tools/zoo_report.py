"""Writes docs/models.md from tools/zoo's results (zoo/results.json's content)."""
import datetime, os, re, subprocess
from collections import defaultdict

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
WAYS = ("dynamic", "fixed", "profile")

# Packages tried for the zoo that did not install or convert here (kept by hand).
NOT_INSTALLED = {}

# What it took to export some models (kept by hand, from tools/make-zoo's first runs).
EXPORT_NOTES = [
    "paddle2onnx 2.1.0 pins onnx 1.17.0: it and paddlepaddle are installed with `--no-deps` (they run with onnx 1.23.2); "
    "so are the packages whose ONNX files the zoo copies (rapidocr-onnxruntime, silero-vad, magika, ddddocr, nudenet), "
    "to keep their OCR and image extras out.",
    "torchvision's ViT-B/16 takes PyTorch's fused attention fast path in eval mode (`aten::_native_multi_head_attention`), "
    "which the TorchScript exporter does not know: exported with `torch.backends.mha.set_fastpath_enabled(False)`.",
    "transformers' default SDPA attention exports with the TorchScript exporter only from opset 14: the models at opsets "
    "11–13 (bert_static, gpt2_static, vit_hf) use eager attention.",
    "GPT-2 with 768-wide embeddings and 4 layers exports at 406 MiB with the TorchScript exporter (the tied LM head is "
    "written twice; the dynamo exporter writes it once): the zoo's GPT-2 is 512 wide.",
    "The dynamo exporter needs `dynamic_shapes` nested like the arguments (one tuple for a `forward(*args)`).",
    "Faster R-CNN is exported with box score threshold 0: with random weights no box passes the default 0.05 and "
    "the outputs were empty. The detectors export at a fixed image size (their resize is traced as constants).",
]


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def verdict(w):
    if not w["built"]:
        return "build failed"
    if not w["validation"]:
        return "built, no data set fits"
    bad = [v for v in w["validation"] if not v["passed"]]
    return "PASS" if not bad else f"FAIL ({len(bad)}/{len(w['validation'])} sets)"


def shapes(d):
    return ", ".join(f"{n} {'x'.join(map(str, s)) or 'scalar'}" for n, s in d.items())


def axes(d):
    return ", ".join(f"{n} {a}" for n, a in d.items() if a) or "none"


def profile(d):
    return ", ".join(f"{n} {'x'.join(map(str, p['min']))} / {'x'.join(map(str, p['opt']))} / {'x'.join(map(str, p['max']))}"
                     for n, p in d.items() if p["min"])


def validation_text(w):
    if not w["built"]:
        return "—"
    parts = []
    for v in w["validation"]:
        errs = [o for o in v["outputs"] if "max_abs" in o]
        worst = (f" abs {max(o['max_abs'] for o in errs):.2g} rel {max(o['max_rel'] for o in errs):.2g}" if errs else "")
        parts.append(f"{v['data_set'].replace('test_data_set_', 'set ')}: {'PASS' if v['passed'] else 'FAIL'}{worst}"
                     + ("" if v["passed"] else f" ({v.get('error', '')})"))
    return "; ".join(parts) or "no data set fits"


def latency_text(lat, way):
    m = lat["median_ms"]
    a = m.get(way)
    if a is None:
        return f"failed: {lat['errors'].get(way, 'not built')}"
    parts = [f"{a:.2f} ms"]
    for key, label in (("ort", "ORT"), ("openvino", "OpenVINO")):
        parts.append(f"/ {label} {a / m[key]:.2f}" if m.get(key) else f"{label} failed: {lat['errors'].get(key, '')}")
    return " ".join(parts)


def head_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def binary_time():
    """When .build/release/anvil was last built (tools/zoo reads it before and after its run)."""
    path = os.path.join(ROOT, ".build", "release", "anvil")
    if not os.path.exists(path):
        return "(missing)"
    return datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_report(path, results, export_failures):
    lines = []
    out = lines.append
    total = len(results)
    built = {w: sum(1 for r in results.values() if r["ways"][w]["built"]) for w in WAYS}
    passed = {w: sum(1 for r in results.values() if r["ways"][w]["passed"]) for w in WAYS}
    out("# Model zoo")
    out("")
    out("Written by `tools/zoo` (do not edit by hand): every model that `tools/make-zoo` put in the git-ignored `zoo/`, "
        "built with `anvil build` three ways — no shape arguments (dynamic), `--shapes` at the static shape (fixed), "
        "`--minShapes/--optShapes/--maxShapes` (profile) — and each engine checked with `anvil validate --reference` "
        "against ONNX Runtime's outputs at every data set whose shapes fit it (the fixed engine only at its own shape). "
        "Tolerances are rtol 1e-3, atol 1e-4 unless a model says otherwise.")
    out("")
    out("```sh")
    out("pip install -r tools/requirements-zoo.txt   # see that file for the --no-deps packages")
    out("tools/make-zoo            # writes zoo/<name>/{model.onnx,meta.json,test_data_set_N}")
    out("tools/zoo                 # builds and validates; --latency adds ONNX Runtime and OpenVINO ratios")
    out("```")
    out("")
    binaries = defaultdict(int)
    for r in results.values():
        binaries[r.get("binary", "unknown")] += 1
    built_at = ", ".join(f"{t} ({n} models)" for t, n in sorted(binaries.items())) if len(binaries) > 1 else next(iter(binaries), "?")
    out(f"Written {datetime.date.today().isoformat()}, repository at commit {head_commit()}, with the anvil binary built "
        f"{built_at} (tools/zoo runs a copy taken at its start); "
        f"{total} models: dynamic built {built['dynamic']}, passed {passed['dynamic']}; fixed built {built['fixed']}, "
        f"passed {passed['fixed']}; profile built {built['profile']}, passed {passed['profile']}.")
    out("")
    out("## Summary")
    out("")
    out("| model | exporter | opset | source | trained | dynamic axes | fixed engine: layers (fused) | fixed engine: slow paths | dynamic | fixed | profile |")
    out("|---|---|---:|---|---|---|---:|---:|---|---|---|")
    for name, r in results.items():
        m, ws = r["meta"], r["ways"]
        f = ws["fixed"] if ws["fixed"]["built"] else next((w for w in ws.values() if w["built"]), ws["fixed"])
        layers = f"{f['layers']} ({f['fused']})" if "layers" in f else "—"
        out(f"| [{name}](#{name}) | {m['exporter']} | {m['opset']} | {m['source']} | {'yes' if m['trained'] else 'no'} "
            f"| {cell(axes(m['dynamic_axes']))} | {layers} | {f.get('slow', '—')} | "
            + " | ".join(verdict(ws[w]) for w in WAYS) + " |")
    out("")
    timed = [(n, r["latency"]["median_ms"]) for n, r in results.items() if r.get("latency")]
    timed = [(n, m) for n, m in timed if m.get("fixed") and m.get("ort") and m.get("openvino")]
    if timed:
        def med(v):
            v = sorted(v)
            return (v[len(v) // 2] + v[(len(v) - 1) // 2]) / 2
        ort, ov = [m["fixed"] / m["ort"] for _, m in timed], [m["fixed"] / m["openvino"] for _, m in timed]
        best = [m["fixed"] / min(m["ort"], m["openvino"]) for _, m in timed]
        slow = sorted(((n, m["fixed"] / min(m["ort"], m["openvino"])) for n, m in timed), key=lambda x: -x[1])
        out("## Latency")
        out("")
        out(f"Fixed-shape engines against ONNX Runtime and OpenVINO (FP32, {timed and results[timed[0][0]]['latency']['threads']} threads, "
            f"alternating rounds, median latency) over the {len(timed)} models timed with `--latency`: median ratio "
            f"**{med(ort):.2f}× ONNX Runtime**, **{med(ov):.2f}× OpenVINO**, {med(best):.2f}× the faster of the two. "
            f"Slower than 1.1× the faster: "
            + (", ".join(f"[{n}](#{n}) {x:.2f}×" for n, x in slow if x > 1.1) or "none")
            + " (each model's section shows where its time goes).")
        out("")
    reasons = defaultdict(lambda: {"types": set(), "models": defaultdict(set), "layers": 0})
    for name, r in results.items():
        for way, w in r["ways"].items():
            for s in w["slow_paths"]:
                g = reasons[re.sub(r"'[^']*'", "'…'", s["reason"])]  # layer names apart, one reason
                g["types"].add(s["type"])
                g["models"][name].add(way)
                g["layers"] += 1
    out("## Slow paths by reason")
    out("")
    if not reasons:
        out("No layer of a built engine is on a slow path.")
    else:
        out("Layers on reference kernels, over all engines built (a layer counts once per way).")
        out("")
        out("| reason | layer types | layers | models (ways) |")
        out("|---|---|---:|---|")
        for reason, g in sorted(reasons.items(), key=lambda kv: (-len(kv[1]["models"]), -kv[1]["layers"], kv[0])):
            out(f"| {cell(reason)} | {', '.join(sorted(g['types']))} | {g['layers']} | "
                + ", ".join(f"{n} ({'/'.join(w for w in WAYS if w in ws)})" for n, ws in sorted(g["models"].items())) + " |")
    out("")
    errors = defaultdict(list)
    for name, r in results.items():
        for way, w in r["ways"].items():
            if not w["built"]:
                errors[w["error"]].append(f"{name} ({way})")
    out("## Build errors")
    out("")
    if not errors:
        out("Every engine built.")
    for e, where in sorted(errors.items(), key=lambda kv: -len(kv[1])):
        out(f"- `{cell(e)}`: {', '.join(where)}")
    out("")
    out("## Validation failures")
    out("")
    any_fail = False
    for name, r in results.items():
        for way, w in r["ways"].items():
            for v in w["validation"]:
                if not v["passed"]:
                    any_fail = True
                    out(f"- {name} ({way}, {v['data_set']}): {cell(v.get('error', ''))}")
    if not any_fail:
        out("Every built engine matched ONNX Runtime.")
    out("")
    out("## Models that did not export")
    out("")
    if not export_failures and not NOT_INSTALLED:
        out("Every model of the catalog exported.")
    for name, reason in sorted(export_failures.items()):
        out(f"- {name}: {cell(reason)}")
    for package, reason in sorted(NOT_INSTALLED.items()):
        out(f"- pip {package}: {cell(reason)}")
    out("")
    out("## Exporter notes")
    out("")
    for note in EXPORT_NOTES:
        out(f"- {note}")
    out("")
    out("## Models")
    for name, r in results.items():
        m = r["meta"]
        out("")
        out(f"### {name}")
        out("")
        out(f"{m['exporter']}, opset {m['opset']}, {m['source']}, {'trained' if m['trained'] else 'random'} weights, "
            f"{m['bytes'] / 2**20:.1f} MiB. Dynamic axes: {axes(m['dynamic_axes'])}. Static shape: {shapes(m['static_shapes'])}."
            + (f" Profile (min / opt / max): {profile(m['profile'])}." if any(m['dynamic_axes'].values()) else "")
            + f" Tolerance: rtol {m['tolerance']['rtol']:g}, atol {m['tolerance']['atol']:g}."
            + (f" {m['notes']}." if m["notes"] else ""))
        out("")
        lat = r.get("latency")
        out("| way | build | layers | fused | slow paths | build time | validation |" + (" latency (Anvil / ORT, Anvil / OpenVINO) |" if lat else ""))
        out("|---|---|---:|---:|---:|---:|---|" + ("---|" if lat else ""))
        for way in WAYS:
            w = r["ways"][way]
            build = "built" if w["built"] else f"failed: {cell(w['error'])}"
            row = (f"| {way} | {build} | {w.get('layers', '—')} | {w.get('fused', '—')} | {w.get('slow', '—')} | {w['seconds']:.1f} s "
                   f"| {cell(validation_text(w))} |")
            if lat:
                row += f" {cell(latency_text(lat, way)) if way != 'profile' else '—'} |"
            out(row)
        if lat and lat.get("profile"):
            prof = lat["profile"]
            out("")
            if "error" in prof:
                out(f"Slower than 1.1× the faster runtime; profiling failed: {cell(prof['error'])}")
            else:
                out(f"Slower than 1.1× the faster runtime. Where the fixed engine's time goes (`anvil bench --dumpProfile` on "
                    f"test_data_set_0, the {len(prof['layers'])} largest of {prof['count']} layers):")
                out("")
                out("| layer | kernel | median ms | share |")
                out("|---|---|---:|---:|")
                for x in prof["layers"]:
                    out(f"| {cell(x['layer'])} | {cell(x['kernel'])} | {x['median_ms']:.3f} | {x['percent']:.1f}% |")
        slow = defaultdict(list)
        for way in WAYS:
            for s in r["ways"][way]["slow_paths"]:
                slow[f"{s['type']}: {s['reason']}"].append(f"{s['layer']} ({way})")
        if slow:
            out("")
            out("Slow paths:")
            for reason, where in slow.items():
                out(f"- {cell(reason)}: {', '.join(where[:6])}" + (f" … {len(where) - 6} more" if len(where) > 6 else ""))
        warnings = sorted({x for way in WAYS for x in r["ways"][way].get("warnings", [])})
        if warnings:
            out("")
            out("Build warnings: " + "; ".join(cell(x) for x in warnings[:5]))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
