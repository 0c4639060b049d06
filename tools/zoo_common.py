"""Shared pieces of tools/make-zoo: the zoo model record, test data written in the ONNX
test-data layout with ONNX Runtime's outputs, and the exporters (TorchScript, dynamo,
Ultralytics, paddle2onnx, tf2onnx, files shipped inside pip packages)."""
import inspect, json, os, shutil, tempfile
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-4


@dataclass
class Zoo:
    """What make-zoo writes for one model besides model.onnx: meta.json's facts and the
    input sets (one dict name → array per data set; the first is at the static shape)."""
    exporter: str
    opset: int
    source: str
    trained: bool
    data_sets: list
    dynamic_axes: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    notes: str = ""


def ort_session(path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def write_model_folder(folder, zoo, name):
    """Writes test_data_set_N (inputs and ONNX Runtime outputs) and meta.json; model.onnx
    must already be in folder. meta.json is written last: its presence marks a finished model."""
    from onnx import numpy_helper
    import onnx
    path = os.path.join(folder, "model.onnx")
    model = onnx.load(path, load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), zoo.opset)
    sess = ort_session(path)
    names = [i.name for i in sess.get_inputs()]
    sets = []
    for k, feeds in enumerate(zoo.data_sets):
        missing = set(names) - set(feeds)
        if missing:
            raise RuntimeError(f"data set {k} lacks inputs {sorted(missing)}")
        ds = os.path.join(folder, f"test_data_set_{k}")
        shutil.rmtree(ds, ignore_errors=True)
        os.makedirs(ds)
        for i, n in enumerate(names):
            with open(os.path.join(ds, f"input_{i}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(np.asarray(feeds[n]), n).SerializeToString())
        outputs = sess.run(None, {n: feeds[n] for n in names})
        for i, (o, v) in enumerate(zip(sess.get_outputs(), outputs)):
            with open(os.path.join(ds, f"output_{i}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(np.asarray(v), o.name).SerializeToString())
        sets.append({"folder": f"test_data_set_{k}", "shapes": {n: list(np.shape(feeds[n])) for n in names},
                     "output_shapes": {o.name: list(np.shape(v)) for o, v in zip(sess.get_outputs(), outputs)}})
    static = sets[0]["shapes"]
    profile = zoo.profile or {}
    if not profile:
        for n, s in static.items():
            profile[n] = {"min": s, "opt": s, "max": s}
    meta = {
        "name": name, "exporter": zoo.exporter, "opset": opset, "source": zoo.source, "trained": zoo.trained,
        "inputs": names, "dynamic_axes": {n: zoo.dynamic_axes.get(n, []) for n in names},
        "static_shapes": static, "profile": {n: profile[n] for n in names if n in profile},
        "tolerance": {"rtol": zoo.rtol, "atol": zoo.atol}, "data_sets": sets,
        "bytes": os.path.getsize(path), "notes": zoo.notes,
    }
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def torch_export(model, example, path, input_names, output_names, opset, dynamic_axes=None, dynamo=False):
    """Exports with the TorchScript exporter (dynamo=False) or the dynamo exporter. dynamic_axes
    maps input name → axis indices (named for the exporter)."""
    import torch
    model.eval()
    # torchvision's attention takes a fused fast path in eval mode that no exporter knows
    torch.backends.mha.set_fastpath_enabled(False)
    for m in model.modules():
        if opset < 14 and hasattr(m, "set_attn_implementation"):  # transformers models
            m.set_attn_implementation("eager")  # the TorchScript exporter maps SDPA only from opset 14
            break
    args = tuple(example)
    with torch.no_grad():
        if not dynamo:
            axes = None
            if dynamic_axes:
                axes = {n: {a: f"{n}_d{a}" for a in ax} for n, ax in dynamic_axes.items() if ax}
            torch.onnx.export(model, args, path, opset_version=opset, input_names=input_names, output_names=output_names,
                              dynamic_axes=axes, dynamo=False, do_constant_folding=True)
        else:
            shapes = None
            if dynamic_axes:
                shapes = tuple({a: torch.export.Dim.AUTO for a in dynamic_axes.get(n, [])} or None for n in input_names)
                params = inspect.signature(model.forward).parameters.values()
                if any(p.kind == p.VAR_POSITIONAL for p in params):
                    shapes = (shapes,)  # forward(*args): torch.export sees one argument holding them all
            prog = torch.onnx.export(model, args, input_names=input_names, output_names=output_names, opset_version=opset,
                                     dynamic_shapes=shapes, dynamo=True, external_data=False)
            prog.save(path, external_data=False)
    import onnx
    m = onnx.load(path, load_external_data=False)
    if m.ByteSize() > 0 and any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        raise RuntimeError("exported with external data; the zoo wants single files")


def torch_feeds(example, input_names):
    return {n: x.detach().numpy() if hasattr(x, "detach") else np.asarray(x) for n, x in zip(input_names, example)}


def copy_package_file(module, relative, path):
    import importlib.util
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise RuntimeError(f"pip package providing '{module}' is not installed")
    src = os.path.join(os.path.dirname(spec.origin), relative)
    if not os.path.exists(src):
        raise RuntimeError(f"{module} has no {relative}")
    shutil.copy(src, path)


def ultralytics_export(yaml, path, opset, imgsz, dynamic):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            import torch
            torch.manual_seed(0)
            model = YOLO(yaml)
            out = model.export(format="onnx", opset=opset, imgsz=imgsz, simplify=False, dynamic=dynamic, verbose=False)
            shutil.copy(out if os.path.isabs(out) else os.path.join(tmp, out), path)
        finally:
            os.chdir(cwd)
