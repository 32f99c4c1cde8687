"""Choosing files for a quantization from a listing: the issue's selection rules."""

from __future__ import annotations

import pytest

from modeldeploy.fetch.errors import MissingFileError, SelectionError
from modeldeploy.fetch.select import gguf_label, select_files

REPO = "hf://org/Model-7B-GGUF"
MULTI = [
    "README.md",
    "model-Q2_K.gguf",
    "model-q4_k_m.gguf",
    "model-Q8_0.gguf",
    "model-F16-00001-of-00003.gguf",
    "model-F16-00002-of-00003.gguf",
    "model-F16-00003-of-00003.gguf",
    "mmproj-model-f16.gguf",
]


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("model-Q4_K_M.gguf", "Q4_K_M"),
        ("model.q4_k_m.gguf", "Q4_K_M"),
        ("Qwen2.5-7B-Instruct-Q5_K_M.gguf", "Q5_K_M"),
        ("x-UD-Q4_K_XL.gguf", "Q4_K_XL"),
        ("x-IQ4_XS.gguf", "IQ4_XS"),
        ("x-fp16.gguf", "F16"),
        ("x-BF16-00002-of-00004.gguf", "BF16"),
        ("plain.gguf", None),
    ],
)
def test_quantization_labels_are_read_from_file_names(name: str, label: str | None) -> None:
    assert gguf_label(name) == label


def test_the_requested_quantization_is_chosen_case_insensitively() -> None:
    selection = select_files(MULTI, source=REPO, quantization="Q4_K_M")
    assert selection.files == ("model-q4_k_m.gguf",)
    assert selection.format == "gguf"
    assert selection.quantization == "Q4_K_M"
    assert selection.available_quantizations == ("F16", "Q2_K", "Q4_K_M", "Q8_0")


def test_a_split_gguf_selects_every_part_in_order() -> None:
    selection = select_files(list(reversed(MULTI)), source=REPO, quantization="f16")
    assert selection.files == (
        "model-F16-00001-of-00003.gguf",
        "model-F16-00002-of-00003.gguf",
        "model-F16-00003-of-00003.gguf",
    )


def test_an_incomplete_split_set_is_refused_naming_the_missing_parts() -> None:
    names = [n for n in MULTI if "00002" not in n]
    with pytest.raises(MissingFileError, match=r"parts 2 of 3 are missing"):
        select_files(names, source=REPO, quantization="F16")


def test_a_missing_quantization_is_refused_listing_what_exists() -> None:
    with pytest.raises(SelectionError) as error:
        select_files(MULTI, source=REPO, quantization="Q5_K_M")
    assert "no GGUF file for quantization Q5_K_M" in str(error.value)
    assert "available: F16, Q2_K, Q4_K_M, Q8_0" in str(error.value)


def test_two_models_with_the_same_quantization_are_ambiguous() -> None:
    names = ["base-Q4_K_M.gguf", "instruct-Q4_K_M.gguf", "base-Q8_0.gguf"]
    with pytest.raises(SelectionError) as error:
        select_files(names, source=REPO, quantization="Q4_K_M")
    message = str(error.value)
    assert "2 GGUF models for quantization Q4_K_M" in message
    assert "base-Q4_K_M.gguf" in message and "instruct-Q4_K_M.gguf" in message


def test_auto_with_several_quantizations_takes_the_default_or_refuses() -> None:
    assert select_files(MULTI, source=REPO).files == ("model-q4_k_m.gguf",)
    with pytest.raises(SelectionError, match=r"choose one of: Q2_K, Q8_0"):
        select_files(["m-Q2_K.gguf", "m-Q8_0.gguf"], source=REPO)
    only = select_files(["m-Q8_0.gguf", "README.md"], source=REPO)
    assert only.files == ("m-Q8_0.gguf",) and only.quantization == "Q8_0"


def test_a_quantization_named_in_the_source_is_honoured_under_auto() -> None:
    selection = select_files(MULTI, source="hf://org/Model-7B-Q8_0-GGUF")
    assert selection.files == ("model-Q8_0.gguf",)


def test_safetensors_take_weights_and_engine_side_files_only() -> None:
    names = [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "original/consolidated.00.pth",
        "onnx/model.onnx",
    ]
    selection = select_files(names, source="hf://org/m", format="auto")
    assert selection.format == "safetensors"
    assert selection.files == (
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    )


def test_safetensors_without_config_json_are_refused() -> None:
    with pytest.raises(MissingFileError, match=r"config\.json"):
        select_files(["model.safetensors"], source="s3://b/m", format="safetensors")


def test_file_globs_override_and_complete_split_sets() -> None:
    selection = select_files(MULTI, source=REPO, globs=["*00001-of-00003.gguf"])
    assert len(selection.files) == 3 and selection.quantization == "F16"
    with pytest.raises(MissingFileError, match=r"no file matches '\*.bin'"):
        select_files(MULTI, source=REPO, globs=["*.bin"])


def test_mixed_repositories_need_a_format_under_auto() -> None:
    names = ["config.json", "model.safetensors", "model-Q4_K_M.gguf"]
    with pytest.raises(SelectionError, match="both GGUF and safetensors"):
        select_files(names, source="hf://org/m")
    assert select_files(names, source="hf://org/m", quantization="Q4_K_M").format == "gguf"
    assert select_files(names, source="hf://org/m", format="safetensors").format == "safetensors"


def test_an_empty_source_is_a_missing_file() -> None:
    with pytest.raises(MissingFileError, match="holds no files"):
        select_files([], source=REPO)
