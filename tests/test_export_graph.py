"""The exported graph: the decoder's linear attention traced in its matmul form (training
keeps the einsum), operators that OpenVINO, ONNX Runtime and TensorRT all take, and outputs
equal to torch's within 1e-4 in ONNX Runtime and OpenVINO for both encoder families (random
weights)."""
from __future__ import annotations

import ast

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")

import onnx  # noqa: E402

import models  # noqa: E402
from engine.model_source import AnomalyPipeline  # noqa: E402
from engine.onnx_export import OnnxPipeline, export_onnx  # noqa: E402
from engine.openvino_export import OpenVinoPipeline  # noqa: E402
from models.vision_transformer import Block, LinearAttention2, linear_attention_matmul  # noqa: E402
from oracles import assert_runtime_equals_torch  # noqa: E402

# Operators every one of the three runtimes parses: ONNX Runtime and OpenVINO compile the
# models below (tested); TensorRT is not installed here, so the list is onnx-tensorrt's
# supported operators (TensorRT >= 8.6), without Einsum (no ellipsis there) and Reciprocal.
PORTABLE = {"Add", "Clip", "Concat", "Conv", "Div", "Elu", "Erf", "Expand", "LayerNormalization",
            "MatMul", "Mul", "Neg", "ReduceL2", "ReduceMean", "ReduceSum", "Reshape", "Resize",
            "Shape", "Slice", "Softmax", "Split", "Squeeze", "Sub", "TopK", "Transpose", "Unsqueeze",
            "Constant", "Gather", "Cast", "Sqrt", "Pow", "Equal", "Where", "ConstantOfShape", "Range"}
CONSTANT_INPUTS = {"TopK": 1, "Squeeze": 1, "Unsqueeze": 1, "Clip": 1}  # TensorRT: initializers


def plain_attention(attn: LinearAttention2, x: torch.Tensor) -> torch.Tensor:
    """LinearAttention2 written out: φ = elu + 1, out_i = φ(q_i)·Σφ(k_j)v_jᵀ / (φ(q_i)·Σφ(k_j) + eps)."""
    B, N, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    out = (q @ (k.transpose(-2, -1) @ v)) / ((q * k.sum(-2, keepdim=True)).sum(-1, keepdim=True) + attn.eps)
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_matmul_form_equals_the_attention(eps):
    torch.manual_seed(0)
    attn = LinearAttention2(48, num_heads=4, qkv_bias=True, eps=eps)
    x = torch.randn(2, 11, 48)
    q, k, v = attn.qkv(x).reshape(2, 11, 3, 4, 12).permute(2, 0, 3, 1, 4)
    core = linear_attention_matmul(F.elu(q) + 1, F.elu(k) + 1, v, eps)
    with torch.no_grad():
        assert torch.allclose(attn.proj(core.transpose(1, 2).reshape(2, 11, 48)), attn(x), rtol=1e-5, atol=1e-6)
        assert torch.allclose(plain_attention(attn, x), attn(x), rtol=1e-5, atol=1e-6)


def test_export_traces_matmuls_and_training_keeps_the_einsum(monkeypatch):
    """torch.export sees the matmul form (no einsum in the graph) with the eager outputs;
    eager calls (training, evaluation) run the einsum."""
    torch.manual_seed(0)
    block = Block(48, 4, attn_eps=1e-8).eval()
    x = torch.randn(2, 11, 48)
    program = torch.export.export(block, (x,))
    targets = {str(n.target) for module in program.graph_module.modules() if isinstance(module, torch.fx.GraphModule)
               for n in module.graph.nodes if n.op == "call_function"}  # autocast regions are subgraphs
    assert not any("einsum" in t for t in targets) and any("matmul" in t or "bmm" in t for t in targets)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), block(x), rtol=1e-5, atol=1e-6)
    seen = []
    original = torch.einsum
    monkeypatch.setattr(torch, "einsum", lambda *a: seen.append(a[0]) or original(*a))
    block(x)
    monkeypatch.undo()
    assert seen == ["...sd,...se->...de", "...sd,...d->...s", "...de,...sd,...s->...se"]


BUILDERS = {"dinomaly": lambda name: models.build_dinomaly(name, "random", dropout=0.0),
            "dinomaly2": lambda name: models.build_dinomaly2(name, "random", dropout=0.0)}


@pytest.fixture(scope="module", params=[("dinomaly", "dinov2reg_vit_small_14", 98),
                                        ("dinomaly", "dinov3_vits16", 96),
                                        ("dinomaly2", "dinov2reg_vit_small_14", 98),
                                        ("dinomaly2", "dinov3_vits16", 96)],
                ids=["dinomaly-dinov2", "dinomaly-dinov3", "dinomaly2-dinov2", "dinomaly2-dinov3"])
def random_export(request, tmp_path_factory):
    """A random-weight pipeline of each method and encoder family exported to ONNX."""
    method, encoder, crop = request.param
    torch.manual_seed(0)
    pipeline = AnomalyPipeline(BUILDERS[method](encoder), 256, 0.01).eval()
    path = tmp_path_factory.mktemp(f"{method}-{encoder}") / "model.onnx"
    export_onnx(pipeline, crop, path, {"encoder": encoder, "crop_size": crop})
    return {"pipeline": pipeline, "path": path, "crop": crop}


def constant_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def test_graph_has_only_portable_operators(random_export):
    model = onnx.load(str(random_export["path"]))
    ops = {n.op_type for n in model.graph.node}
    assert ops <= PORTABLE, ops - PORTABLE
    assert "Einsum" not in ops and "Reciprocal" not in ops
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 18)}
    constants = constant_names(model)
    for node in model.graph.node:
        if node.op_type in CONSTANT_INPUTS and len(node.input) > CONSTANT_INPUTS[node.op_type]:
            assert node.input[CONSTANT_INPUTS[node.op_type]] in constants, node.name
        if node.op_type == "Resize":  # the weight-only position-embedding resize is folded
            mode = {a.name: a.s for a in node.attribute}["mode"]
            assert mode == b"linear", node.name


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtimes_equal_torch(random_export, runtime):
    crop = random_export["crop"]
    runner = (OnnxPipeline(random_export["path"]) if runtime == "onnxruntime"
              else OpenVinoPipeline(random_export["path"], "f32", flag="--onnx"))
    torch.manual_seed(1)
    assert_runtime_equals_torch(runner, random_export["pipeline"],
                                (torch.randn(1, 3, crop, crop), torch.randn(3, 3, crop, crop)), 256)


def test_name_scopes_are_literals(random_export):
    """The int8 split reads each node's scope (`pkg.torch.onnx.name_scopes`): a Python list
    literal whose second entry is `model` inside the detector."""
    model = onnx.load(str(random_export["path"]), load_external_data=False)
    scopes = [ast.literal_eval({p.key: p.value for p in n.metadata_props}["pkg.torch.onnx.name_scopes"])
              for n in model.graph.node if any(p.key == "pkg.torch.onnx.name_scopes" for p in n.metadata_props)]
    inside = [s for s in scopes if s[1:2] == ["model"]]
    assert inside and len(inside) < len(scopes)
    assert any(s[1:2] == ["blur"] for s in scopes)
