"""Text classification: `--data text:FILE` read with datasets and tokenised with the model
directory's tokenizer, a BERT-style model compressed end to end, its save_pretrained folder
loaded back by transformers, and its ONNX model fed by name with any batch and length."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import ARCH, assert_one_line_error, invoke
from tiny_text import bert_dir, rows, save_bert, write_csv

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text")
    return {"model": bert_dir(root / "bert"),
            "train": write_csv(root / "train.csv", rows(240, seed=1)),
            "test": write_csv(root / "test.csv", rows(80, seed=2))}  # fmt: skip


def test_compress_a_text_classifier_end_to_end(world: dict[str, Path], tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    out = tmp_path / "out"
    result = invoke("compress", world["model"], "--data", f"text:{world['train']}",
                    "--eval-data", world["test"], "--depth", "3", "--target-sparsity", "0.9",
                    "--epochs", "1", "--out", out, "--quiet", "data.batch_size=32",
                    "sparsity.finetune_epochs=0", "export.latency_batches=[1]",
                    "export.latency_rounds=1")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    sparsity = report["sparsity"]
    n = sparsity["factorized_weights"]
    assert sparsity["nonzero_weights"] == n - round(0.9 * n)  # exact
    layers = [row["name"] for row in report["layers"]]
    assert layers and all(".encoder.layer." in name for name in layers)  # the blocks only
    assert report["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert report["input_dtype"] == "int64"
    assert report["data"]["eval_samples"] == 80 and report["data"]["classes"] == 2
    accuracy = report["accuracy"]
    assert 0.0 <= accuracy["compressed_pytorch_f1"] <= 1.0 and "original_f1" in accuracy
    assert accuracy["compressed_onnxruntime"] == pytest.approx(accuracy["compressed_pytorch"])

    hf_dir = out / "hf_model"
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        hf_dir, local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    zeros = sum(int((reloaded.get_parameter(name.removeprefix("hf.")) == 0).sum())
                for name in layers)  # fmt: skip
    assert zeros == round(0.9 * n)  # the zeros are in what transformers loads

    model = onnx.load(str(out / "model.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}  # fmt: skip
    assert dims == {name: ["batch", "sequence"] for name in report["input_names"]}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for texts in (["the film was great and happy"], [s for s, _ in rows(5, seed=7)]):
        enc = tokenizer(texts, padding=True, return_tensors="np")  # other batch and length
        got = session.run(None, {k: enc[k].astype(np.int64) for k in report["input_names"]})[0]
        with torch.no_grad():
            want = reloaded(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)

    for data in ([], ["--data", f"text:{world['train']}"]):  # made-up inputs, then real ones
        verified = invoke("verify", out, *data)
        assert verified.exit_code == 0, verified.output
        assert "hf_model/ (transformers) rebuilt" in verified.output
    assert "compressed_onnxruntime" in verified.output  # accuracy re-measured on the text
    bench = invoke("bench", out, "--rounds", "1", "--json")
    assert bench.exit_code == 0, bench.output


def test_dry_run_lists_the_encoder_linear_weights(world: dict[str, Path]) -> None:
    result = invoke("compress", world["model"], "--data", f"text:{world['train']}", "--dry-run",
                    "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    names = [w["name"] for w in json.loads(result.stdout)["weights"]]
    assert len(names) == 2 * 6  # per block: query, key, value, attention output, two MLP
    assert all(".encoder.layer." in n for n in names)


def test_text_files_of_every_kind_load(world: dict[str, Path], tmp_path: Path) -> None:
    from dwfc.data import load_data

    data = rows(50, seed=3)
    table = datasets.Dataset.from_dict({"a": [s for s, _ in data], "b": [s[::-1] for s, _ in data],
                                        "y": ["pos" if y else "neg" for _, y in data]})
    table.to_json(tmp_path / "t.jsonl")
    table.to_parquet(tmp_path / "t.parquet")
    datasets.DatasetDict({"train": table, "test": table.select(range(10))}).save_to_disk(
        tmp_path / "saved")
    options = {"text_columns": ["a", "b"], "label_column": "y", "tokenizer": str(world["model"]),
               "max_length": 24}  # fmt: skip
    for source, sizes in ((f"text:{tmp_path / 't.jsonl'}", (40, 10)),
                          (f"text:{tmp_path / 't.parquet'}", (40, 10)),
                          (f"text:{tmp_path / 'saved'}", (50, 10))):  # fmt: skip
        train, test = load_data(source, **options)
        assert (len(train), len(test)) == sizes, source
        assert train.classes == ["neg", "pos"]
        x, y = train[0]
        assert set(x) == {"input_ids", "attention_mask", "token_type_ids"}
        assert x["input_ids"].shape == (24,) and x["token_type_ids"].max() == 1  # a pair
        assert int(y) in (0, 1)
    train, _ = load_data(f"text:{world['train']}", tokenizer=str(world["model"]))
    longest = max(int(train[i][0]["attention_mask"].sum()) for i in range(len(train)))
    assert train[0][0]["input_ids"].shape == (longest,)  # max_length unset: the longest text


def _no_tokenizer(tmp: Path) -> Path:
    folder = tmp / "bare"
    save_bert(folder, vocab_size=200)
    return folder


def _masked_lm(tmp: Path) -> Path:
    folder = tmp / "mlm"
    save_bert(folder, vocab_size=200, head="BertForMaskedLM")
    return folder


@pytest.mark.parametrize(("model", "data", "fragment"), [
    (lambda t, w: w["model"], lambda t, w: write_csv(t / "x.csv", rows(20), text="sentence"),
     "no column 'text'"),
    (lambda t, w: w["model"], lambda t, w: write_csv(t / "x.csv", rows(20), label="target"),
     "no column 'label'"),
    (lambda t, w: _no_tokenizer(t), lambda t, w: w["train"], "no tokenizer"),
    (lambda t, w: _masked_lm(t), lambda t, w: w["train"], "has no supported head"),
    (lambda t, w: w["train"].parent, lambda t, w: w["train"], "without config.json"),
    (lambda t, w: w["model"], lambda t, w: t / "missing.csv", "no such file"),
])  # fmt: skip
def test_bad_text_input_gets_one_line(world: dict[str, Path], tmp_path: Path, model: object,
                                      data: object, fragment: str) -> None:  # fmt: skip
    out = tmp_path / "o"
    result = invoke("compress", model(tmp_path, world), "--data",  # type: ignore[operator]
                    f"text:{data(tmp_path, world)}", "--out", out, "--quiet")  # type: ignore[operator]
    assert_one_line_error(result, fragment)
    assert result.exit_code == 2
    assert not out.exists()


def test_eval_data_is_for_text_only(state_dict_path: Path, tmp_path: Path) -> None:
    result = invoke("compress", state_dict_path, "--arch", ARCH, "--data", "mnist5k",
                    "--eval-data", "x.csv", "--out", tmp_path / "o", "--quiet")  # fmt: skip
    assert_one_line_error(result, "applies to text data only")


def test_channel_structure_refuses_text_models(world: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("compress", world["model"], "--data", f"text:{world['train']}",
                    "--structure", "channel", "--target-speedup", "2", "--out", tmp_path / "o",
                    "--quiet")  # fmt: skip
    assert_one_line_error(result, "one input tensor", "input_ids")
    assert not (tmp_path / "o").exists()


def test_labels_are_class_numbers_or_names(world: dict[str, Path], tmp_path: Path) -> None:
    from dwfc.data import load_data
    from dwfc.errors import InputError

    whole = tmp_path / "whole.csv"  # a column with a gap reads as floats: 1.0 is class 1
    whole.write_text("text,label\ngood day,1\nbad day,0\nfine film,1.0\ndull film,0\n")
    train, test = load_data(f"text:{whole}", tokenizer=str(world["model"]))
    assert sorted(int(y) for ds in (train, test) for _, y in ds) == [0, 0, 1, 1]
    half = tmp_path / "half.csv"
    half.write_text("text,label\ngood day,1\nbad day,0.5\n")
    with pytest.raises(InputError, match="holds 0.5"):
        load_data(f"text:{half}", tokenizer=str(world["model"]))
    unseen = tmp_path / "unseen.csv"
    unseen.write_text("text,label\nok,maybe\n")
    named = tmp_path / "named.csv"
    named.write_text("text,label\ngood,pos\nbad,neg\n")
    with pytest.raises(InputError, match="not in the training data"):
        load_data(f"text:{named}", tokenizer=str(world["model"]), eval_source=str(unseen))


def test_flag_values_reach_the_recipe_verbatim() -> None:
    from dwfc.cli.options import flag_overrides
    from dwfc.config import load_recipe

    recipe = load_recipe("default", flag_overrides(data="text: my file.csv", eval_data="yes"))
    assert (recipe.data.source, recipe.data.eval_source) == ("text: my file.csv", "yes")
