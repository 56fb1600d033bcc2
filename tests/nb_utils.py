"Running the package's notebooks from the tests: papermill into a temporary folder, and what came out."
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_notebook(name: str, out_nb: Path, **params) -> list[dict]:
    "Execute `nbs/<name>.ipynb` with papermill `params` into `out_nb` (run in its folder); the executed code cells."
    import papermill as pm
    pm.execute_notebook(str(REPO/'nbs'/f'{name}.ipynb'), str(out_nb), parameters=params, cwd=str(Path(out_nb).parent),
                        kernel_name='python3', progress_bar=False)
    return [c for c in json.loads(Path(out_nb).read_text())['cells'] if c['cell_type'] == 'code']


def n_images(cells: list[dict]) -> int:
    "How many PNG outputs (plots) the cells hold."
    return sum('image/png' in o.get('data', {}) for c in cells for o in c.get('outputs', []))


def markdown_text(cells: list[dict]) -> str:
    "The cells' markdown outputs (e.g. tables), joined."
    return ''.join(''.join(o.get('data', {}).get('text/markdown', '')) for c in cells for o in c.get('outputs', []))
