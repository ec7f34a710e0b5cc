"""docs/models.md is generated from the models (scripts/make_models_doc.py) and must be up to date."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .helpers import slow

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_models_doc.py"


@slow
def test_models_doc_is_generated_and_up_to_date():
    spec = importlib.util.spec_from_file_location("make_models_doc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DOC.read_text() == module.render(), "run: python scripts/make_models_doc.py"
