"""GET /loralab/loras/info?name=: what a LoRA file in the loras folders holds, in a real ComfyUI, both prefixes."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from scripts.lora_fixtures import SD1_TARGETS, write_format, write_pickle_pt, write_truncated
from tests.host.test_routes import PREFIXES, assert_error, get_json

KOHYA = "info/Ring LoRA #1 + ünï 漢字 50%.safetensors"  # a subfolder and URL syntax in the name
PEFT = "info/peft bare.safetensors"  # no __metadata__: all from the tensors
LOHA = "info/loha.safetensors"
CORRUPT = "info/truncated.safetensors"
PICKLE = "info/old.pt"
KOHYA_META = {"ss_network_module": "networks.lora", "ss_network_dim": "16", "ss_network_alpha": "8.0",
              "ss_base_model_version": "sd_v1", "modelspec.trigger_phrase": "lrlring, silver ring",
              "ss_datasets": json.dumps([{"subsets": [{"class_tokens": "lrlring"}]}])}
LINEAR_TARGETS = [t for t in SD1_TARGETS if t.kind != "conv3x3"]


@pytest.fixture(scope="module")
def lora_files(host) -> Path:
    folder = host.loras_dir / "info"
    folder.mkdir(exist_ok=True)
    write_format("kohya_ldm", host.loras_dir / KOHYA, LINEAR_TARGETS, rank=16, alpha=8.0, metadata=KOHYA_META)
    write_format("peft", host.loras_dir / PEFT, SD1_TARGETS, rank=4)
    write_format("loha", host.loras_dir / LOHA, SD1_TARGETS, rank=8, alpha=4.0)
    write_truncated(host.loras_dir / CORRUPT)
    write_pickle_pt(host.loras_dir / PICKLE)
    return folder


def info_url(prefix: str, name: str) -> str:
    return f"{prefix}/loras/info?name={quote(name, safe='')}"


def fetch_info(host, prefix: str, name: str) -> dict:
    status, info, _ = get_json(host, "GET", info_url(prefix, name))
    assert status == 200 and info["readable"] is True and info["name"] == name, (name, info)
    return info


@pytest.mark.parametrize("prefix", PREFIXES)
def test_kohya_file_with_metadata(host, lora_files, prefix):
    info = fetch_info(host, prefix, KOHYA)
    assert info["source"] == KOHYA
    assert info["ranks"] == [16] and info["alphas"] == [8.0] and info["alpha"] == 8.0
    assert info["base_model"] == "sd_v1" and info["base_model_hint"] == "sd1"
    assert info["base_model_hint_label"] == "SD 1.x"
    assert info["trigger_words"] == ["lrlring", "silver ring"]
    assert "kohya_ldm" in info["formats"] and info["modules"] == len(LINEAR_TARGETS)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_peft_file_without_metadata_reads_its_tensors(host, lora_files, prefix):
    info = fetch_info(host, prefix, PEFT)
    assert "PEFT / diffusers (lora_A/lora_B)" in info["format_names"]
    assert info["ranks"] == [4] and info["alpha"] is None  # PEFT keeps no alpha in its tensors
    assert info["base_model"] is None and info["base_model_hint"] == "sd1"
    assert info["trigger_words"] == []


def test_bare_kohya_file_has_alpha_from_its_tensors(host, lora_files):
    name = "info/bare kohya.safetensors"
    write_format("kohya", host.loras_dir / name, SD1_TARGETS, rank=4, alpha=2.0)
    info = fetch_info(host, "/api/loralab", name)
    assert info["ranks"] == [4] and info["alpha"] == 2.0 and info["base_model"] is None


def test_loha_file_names_its_format(host, lora_files):
    info = fetch_info(host, "/loralab", LOHA)
    assert info["formats"] == ["loha"] and info["format_names"] == ["LyCORIS LoHa"]
    assert info["ranks"] == [8] and info["alpha"] == 4.0


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("name, mentions", [(CORRUPT, "is truncated"), (PICKLE, "pickle")])
def test_unreadable_files_are_answered_200_with_the_reason_naming_only_the_file(host, lora_files, prefix, name,
                                                                                mentions):
    """Bug (issue 10): these were answered 422, which the editor's browser logged as a console error for every
    such file in the folder. An unreadable file is an expected answer about the file, not a failed request."""
    status, answer, _ = get_json(host, "GET", info_url(prefix, name))
    assert status == 200, answer
    assert set(answer) == {"name", "readable", "reason"} and answer["readable"] is False, answer
    assert answer["name"] == name and name in answer["reason"] and mentions in answer["reason"], answer
    assert str(host.base_dir) not in answer["reason"] and str(host.loras_dir) not in answer["reason"], answer


def test_a_file_is_parsed_once_for_many_requests(host, lora_files):
    for _ in range(3):
        fetch_info(host, "/loralab", LOHA)
    assert host.log_text().count(f"read {LOHA} (") == 1, "the Load LoRA cache serves the later requests"


BAD_QUERIES = ["", "?name=", "?name=%20", "?other=x.safetensors", f"?name={quote('../x.safetensors')}",
               f"?name={quote('a/../../x.safetensors')}", "?name=%2Fetc%2Fpasswd", "?name=C%3A%5Cx.safetensors",
               "?name=a%00.safetensors", f"?name={quote(LOHA)}&name={quote(LOHA)}", "?name=" + "x" * 2000]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("query", BAD_QUERIES)
def test_malformed_requests_get_400(host, lora_files, prefix, query):
    assert_error(host, "GET", f"{prefix}/loras/info{query}", 400)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("name", ["gone away.safetensors", "info/nope.safetensors", "info", "info/",
                                  "x" * 1000 + ".safetensors"])
def test_names_not_listed_get_404(host, lora_files, prefix, name):
    assert_error(host, "GET", info_url(prefix, name), 404, mentions="No LoRA file")


def test_other_methods_get_405(host):
    status, answer, headers = get_json(host, "POST", info_url("/loralab", LOHA))
    assert status == 405 and headers.get("Allow") == "GET", answer
