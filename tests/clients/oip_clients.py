"""Every call of the Open Inference Protocol that tritonclient.http and the kserve SDK's REST
client make, against a running `magsd serve` (run by tests/serve_clients.rs).

Usage: oip_clients.py HOST:PORT DIR, where DIR holds planes.f32 (4 preprocessed [1, S, S] FP32
images, little-endian) and expected.json ({"size": S, "classes": [...], "probabilities":
[[...], ...]}, each image's probabilities from POST /api/v1/predict). Prints one line per check;
any failure raises (non-zero exit).
"""
import asyncio
import json
import sys
from importlib.metadata import version as package_version

import numpy as np
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

url, folder = sys.argv[1], sys.argv[2]
expected = json.load(open(f"{folder}/expected.json"))
S, K = expected["size"], len(expected["classes"])
planes = np.fromfile(f"{folder}/planes.f32", dtype="<f4").reshape(4, 1, S, S)
v1 = np.array(expected["probabilities"], dtype=np.float64)
MODEL = "magsd"
checks = 0


def ok(what):
    global checks
    checks += 1
    print("ok", what, flush=True)


def same_probs(p, n, what):
    assert p.shape == (n, K), f"{what}: shape {p.shape}"
    err = np.abs(p.astype(np.float64) - v1[:n]).max()
    assert err < 1e-5, f"{what}: probabilities differ from /api/v1/predict by {err}: {p} vs {v1[:n]}"


def refused(call, status, says, what):
    try:
        call()
    except InferenceServerException as e:
        assert e.status() == str(status), f"{what}: status {e.status()} ({e.message()})"
        assert says in e.message(), f"{what}: {e.message()}"
        ok(f"{what} refused: {status} {e.message()[:80]}")
        return
    raise AssertionError(f"{what}: accepted")


# --- tritonclient.http ---------------------------------------------------------------------
c = th.InferenceServerClient(url=url)
assert c.is_server_live() and c.is_server_ready()
ok("triton: live, ready")
assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, "1")
assert not c.is_model_ready(MODEL, "2") and not c.is_model_ready("other")
ok("triton: model ready, version 1 ready, version 2 and other models not")
meta = c.get_server_metadata()
assert set(meta["extensions"]) >= {"binary_tensor_data", "statistics", "model_configuration"}, meta
ok(f"triton: server metadata {meta}")
for version in ("", "1"):
    m = c.get_model_metadata(MODEL, version)
    assert m["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, S, S]}, m
    assert m["versions"] == ["1"], m
    cfg = c.get_model_config(MODEL, version)
    assert cfg["input"][0]["dims"] == [1, S, S] and cfg["max_batch_size"] >= 1, cfg
ok("triton: model metadata and config, plain and version 1")
refused(lambda: c.get_model_metadata(MODEL, "2"), 404, "version 1 only", "triton: metadata of version 2")

for n in (1, 4):
    for binary_in in (False, True):
        for binary_out in (False, True):
            inp = th.InferInput("input", [n, 1, S, S], "FP32")
            inp.set_data_from_numpy(planes[:n], binary_data=binary_in)
            outs = [th.InferRequestedOutput("probabilities", binary_data=binary_out), th.InferRequestedOutput("attention", binary_data=binary_out)]
            r = c.infer(MODEL, [inp], outputs=outs, request_id=f"r{n}")
            assert r.get_response()["id"] == f"r{n}"
            same_probs(r.as_numpy("probabilities"), n, f"triton n={n} binary in {binary_in} out {binary_out}")
            att = r.as_numpy("attention")
            assert att.shape[:2] == (n, 1) and att.shape[2] == att.shape[3], att.shape
            ok(f"triton: infer batch {n}, binary input {binary_in}, binary outputs {binary_out}")

# No outputs named: tritonclient asks for all of them in binary (binary_data_output).
inp = th.InferInput("input", [4, 1, S, S], "FP32")
inp.set_data_from_numpy(planes)
r = c.infer(MODEL, [inp])
same_probs(r.as_numpy("probabilities"), 4, "triton, outputs not named")
assert r.as_numpy("attention") is not None
ok("triton: infer with outputs not named (binary_data_output)")
r = c.infer(MODEL, [inp], outputs=[th.InferRequestedOutput("probabilities")], model_version="1")
same_probs(r.as_numpy("probabilities"), 4, "triton, version 1, one output")
assert r.as_numpy("attention") is None
ok("triton: infer on version 1 asking for one output")
refused(lambda: c.infer(MODEL, [inp], model_version="2"), 404, "version 1 only", "triton: infer on version 2")
bad = th.InferInput("input", [1, 1, S, S], "FP64")
bad.set_data_from_numpy(planes[:1].astype(np.float64))
refused(lambda: c.infer(MODEL, [bad]), 400, "takes FP32", "triton: FP64 input")
refused(lambda: c.infer(MODEL, [inp], outputs=[th.InferRequestedOutput("probabilities", class_count=2)]), 400, "classification", "triton: classification")

for args in ((), (MODEL,), (MODEL, "1")):
    st = c.get_inference_statistics(*args)
    m = st["model_stats"][0]
    assert m["name"] == MODEL and m["inference_count"] >= 28 and m["execution_count"] >= 1, st
    assert m["inference_stats"]["success"]["count"] == m["inference_count"], st
ok(f"triton: statistics {st['model_stats'][0]['inference_count']} images in {st['model_stats'][0]['execution_count']} batches")
refused(lambda: c.get_model_repository_index(), 400, "its extensions are", "triton: repository index")
refused(lambda: c.unload_model(MODEL), 400, "model_repository", "triton: unload")
c.close()


# --- kserve SDK, REST, v2 ------------------------------------------------------------------
async def kserve_calls():
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
    base = f"http://{url}"
    assert await client.is_server_live(base) and await client.is_server_ready(base)
    assert await client.is_model_ready(base, MODEL) and not await client.is_model_ready(base, "other")
    ok("kserve: live, ready, model ready")
    for n in (1, 4):
        for binary in (False, True):
            inp = InferInput("input", [n, 1, S, S], "FP32")
            inp.set_data_from_numpy(planes[:n], binary_data=binary)
            outs = [RequestedOutput("probabilities", parameters={"binary_data": binary}), RequestedOutput("attention")]
            req = InferRequest(model_name=MODEL, infer_inputs=[inp], request_id=f"k{n}", request_outputs=outs)
            res = await client.infer(base, req, model_name=MODEL)
            assert res.id == f"k{n}", res.id
            by_name = {o.name: o for o in res.outputs}
            same_probs(by_name["probabilities"].as_numpy(), n, f"kserve n={n} binary {binary}")
            assert by_name["attention"].as_numpy().shape[:2] == (n, 1)
            ok(f"kserve: infer batch {n}, binary input and probabilities {binary}")
    # A plain dict request, binary outputs for all (binary_data_output).
    flat = planes[:1].reshape(-1).tolist()
    res = await client.infer(
        base,
        {"inputs": [{"name": "input", "shape": [1, 1, S, S], "datatype": "FP32", "data": flat}], "parameters": {"binary_data_output": True}},
        model_name=MODEL,
    )
    same_probs({o.name: o for o in res.outputs}["probabilities"].as_numpy(), 1, "kserve dict request, binary_data_output")
    ok("kserve: dict request with binary_data_output")
    await client.close()


asyncio.run(kserve_calls())
print(f"{checks} checks passed (tritonclient {package_version('tritonclient')}, kserve {package_version('kserve')})")
