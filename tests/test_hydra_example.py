"""The HYDRA example script runs, and its reality check holds: removing the most helpful example raises the loss."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_hydra_example_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("hydra_example", ROOT / "examples" / "hydra_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(n_train=200, n_test=3, epochs=1, folder=str(tmp_path))
    assert out["scores"].shape == (200, 3)
    assert out["predicted"] > 0 and out["actual"] > 0
    assert 0.5 < out["actual"] / out["predicted"] < 2.0
    assert "most helpful" in capsys.readouterr().out
