"""The README's quick-start runs as written."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_quickstart_runs(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README quick-start", "exec"), namespace)
    scores, top = namespace["scores"], namespace["top"]
    assert scores.shape == (1000, 20)
    assert top.helpful_indices.shape == (20, 5)
    # top-k must agree with the dense matrix
    assert (top.helpful_values[:, 0] == scores.max(dim=0).values).all()


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)[0].strip().splitlines()
    assert len(commands) == 2
    for cmd in commands:
        assert cmd in ci
