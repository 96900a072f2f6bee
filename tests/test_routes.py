"""The server's routes in process (FastAPI's TestClient over create_app): the same app the live-server
tests start, reached without a socket."""
import numpy as np
from fastapi.testclient import TestClient
from shared_data import DEMO_BUNDLE

from saganet.serve.app import Settings, create_app


def test_routes_in_process(tmp_path, data_dir):
    settings = Settings(model=str(DEMO_BUNDLE), backend="onnxruntime", state_dir=str(tmp_path / "state"), max_batch=2,
                        max_queue_tiles=4, slide_root=str(data_dir / "wsi"))
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        info = client.get("/v1/model").json()
        t = info["tile_size"]
        tiles = np.full((3, t, t, 3), 200, np.uint8)
        r = client.post(f"/v1/classify?shape=3,{t},{t},3", content=tiles.tobytes(),
                        headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200 and np.array(r.json()["probs"]).shape == (3, len(info["classes"]))
        too_many = np.full((5, t, t, 3), 200, np.uint8)  # more than the whole queue: can never fit
        r = client.post(f"/v1/classify?shape=5,{t},{t},3", content=too_many.tobytes(),
                        headers={"content-type": "application/octet-stream"})
        assert r.status_code == 413 and "at most 4" in r.json()["error"]
        assert client.post("/v1/slides", json={"path": "../x.svs"}).status_code in (403, 404, 422)
        assert client.get("/v1/slides/" + "0" * 32).status_code == 404
        assert "saganet_batch_tiles_count" in client.get("/metrics").text
