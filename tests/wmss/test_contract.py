"""The contract table (weakstrong/wmss/contract.py, docs/wmss_contract.md, README): complete against the installed
TRL (a field added by a TRL upgrade fails here until it is classified), in sync with the docs, and its refusals real."""

import dataclasses
import inspect
import os
import re

import pytest
from trl import SFTConfig, SFTTrainer

from weakstrong import WMSSTrainer
from weakstrong.wmss.contract import CONFIG, REFUSED, REFUSED_VALUES, TRAINER, WMSS, contract_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_sft_config_field_is_in_the_table():
    fields = [f.name for f in dataclasses.fields(SFTConfig)]
    missing = [n for n in fields if n not in CONFIG]
    assert not missing, f"SFTConfig fields missing from weakstrong/wmss/contract.py CONFIG: {missing}"
    stale = [n for n in CONFIG if n not in fields]
    assert not stale, f"contract rows for fields SFTConfig no longer has: {stale}"


def test_every_sft_trainer_argument_is_in_the_table():
    sft = list(inspect.signature(SFTTrainer.__init__).parameters)[1:]
    ours = list(inspect.signature(WMSSTrainer.__init__).parameters)[1:]
    assert [n for n in sft if n not in TRAINER] == []
    assert sorted(TRAINER) == sorted(ours)


def test_docs_and_readme_show_the_table():
    with open(os.path.join(ROOT, "docs", "wmss_contract.md")) as f:
        assert f.read() == contract_markdown(), "regenerate: python -m weakstrong.wmss.contract > docs/wmss_contract.md"
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "docs/wmss_contract.md" in readme
    for table in (CONFIG, TRAINER):
        for name, (kind, _, _) in table.items():
            if kind in (WMSS, REFUSED):
                assert f"`{name}`" in readme, f"README's WMSS contract lacks {name}"


def test_verified_by_names_real_tests():
    for table in (CONFIG, TRAINER):
        for name, (_, _, test) in table.items():
            if not test or test.startswith("peer:"):  # TRL's own tests/test_sft_trainer.py (not in this repo)
                continue
            path, _, func = test.partition("::")
            full = os.path.join(ROOT, path)
            assert os.path.exists(full), f"{name}: {path} does not exist"
            if func:
                with open(full) as f:
                    assert re.search(rf"def {re.escape(func)}\(", f.read()), f"{name}: no test {test}"


@pytest.mark.parametrize("field", sorted(REFUSED_VALUES))
def test_refused_fields_are_refused(field, make_args):
    assert CONFIG[field][0] == REFUSED
    with pytest.raises(ValueError, match=field):
        make_args(**{field: REFUSED_VALUES[field]})


def test_parallelism_config_is_refused(make_args):
    from accelerate.parallelism_config import ParallelismConfig

    with pytest.raises(ValueError, match="parallelism_config .*not supported by WMSS"):
        make_args(parallelism_config=ParallelismConfig(tp_size=1))


def test_every_refused_row_is_tested():
    refused = {n for t in (CONFIG, TRAINER) for n, (k, _, _) in t.items() if k == REFUSED}
    assert refused == set(REFUSED_VALUES) | {"parallelism_config", "compute_loss_func"}
