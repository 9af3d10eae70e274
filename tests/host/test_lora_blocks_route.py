"""GET /loralab/loras/blocks?name=&weights=: the blocks of a LoRA file in the loras folders with their weights, in a
real ComfyUI (what the editor's block sliders show); every parameter validated, only listed files served."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from scripts.lora_fixtures import SD1_TARGETS, Target, write_format, write_truncated
from scripts.tiny_checkpoint import TINY_TARGETS
from tests.host.test_lora_info_route import BAD_QUERIES
from tests.host.test_routes import PREFIXES, assert_error, get_json

TINY = "blocks/tiny + ünï 50%.safetensors"  # a subfolder and URL syntax in the name
FLUX = "blocks/flux.safetensors"
CORRUPT = "blocks/truncated.safetensors"


@pytest.fixture(scope="module")
def block_files(host):
    (host.loras_dir / "blocks").mkdir(exist_ok=True)
    write_format("kohya", host.loras_dir / TINY, TINY_TARGETS, rank=2)
    write_format("kohya", host.loras_dir / FLUX, [Target("double_blocks.3.img_attn.qkv", "linear", 8, 8),
                                                  Target("single_blocks.0.linear1", "linear", 8, 8)], rank=2)
    write_truncated(host.loras_dir / CORRUPT)


def _block(block: str, layers: int, weight: float = 1.0) -> dict:
    return {"block": block, "layers": layers, "weight": weight}


def blocks_url(prefix: str, name: str, weights: str | None = None) -> str:
    query = f"name={quote(name, safe='')}" + ("" if weights is None else f"&weights={quote(weights, safe='')}")
    return f"{prefix}/loras/blocks?{query}"


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_blocks_of_a_file_in_layout_order(host, block_files, prefix):
    status, answer, _ = get_json(host, "GET", blocks_url(prefix, TINY))
    assert status == 200, answer
    assert answer["name"] == TINY and answer["readable"] is True
    assert answer["weights"] == "" and answer["outside"] == 0
    assert answer["blocks"] == [_block("BASE", 2), _block("IN01", 6), _block("M00", 1), _block("OUT04", 1)]


@pytest.mark.parametrize(("weights", "expected"), [("OUTALL", [1.0, 0.0, 0.0, 1.0]), ("", [1.0, 1.0, 1.0, 1.0]),
                                                   ("MID=0.25, IN01=0", [1.0, 0.0, 0.25, 1.0])])
def test_each_block_has_its_weight_under_the_text(host, block_files, weights, expected):
    status, answer, _ = get_json(host, "GET", blocks_url("/api/loralab", TINY, weights))
    assert status == 200, answer
    assert [b["weight"] for b in answer["blocks"]] == expected and answer["weights"] == weights


def test_dit_blocks(host, block_files):
    answer = get_json(host, "GET", blocks_url("/loralab", FLUX, "double_blocks.0-5=0.5"))[1]
    assert answer["blocks"] == [_block("D03", 1, 0.5), _block("S00", 1)]


@pytest.mark.parametrize(("name", "weights", "mentions"), [
    (TINY, "SOMETIMES", "not a known preset"),
    (FLUX, "OUTALL", "Flux"),  # SD1 values cannot name this file's blocks
    (TINY, "MID=x", "MID"),
    (TINY, "1" * 4097, "at most 4096 characters"),  # URL-safe: the whole URL stays under aiohttp's limit
])
def test_a_text_the_loaders_refuse_gets_400_with_their_message(host, block_files, name, weights, mentions):
    assert_error(host, "GET", blocks_url("/loralab", name, weights), 400, mentions=mentions)


@pytest.mark.parametrize("query", [*BAD_QUERIES, f"?name={quote(TINY)}&weights=a&weights=b"])
def test_malformed_requests_get_400(host, block_files, query):
    assert_error(host, "GET", f"/loralab/loras/blocks{query}", 400)


@pytest.mark.parametrize("name", ["gone away.safetensors", "blocks", "blocks/", "../" + SD1_TARGETS[0].name])
def test_files_the_host_does_not_list_are_not_served(host, block_files, name):
    status, answer, _ = get_json(host, "GET", blocks_url("/loralab", name))
    assert status in (400, 404) and answer["error"], answer


@pytest.mark.parametrize("weights", ["", "OUTALL"])
def test_an_unreadable_file_is_answered_200_with_the_reason_naming_only_the_file(host, block_files, weights):
    """Bug (issue 10): it was answered 422, which the editor's browser logged as a console error."""
    status, answer, _ = get_json(host, "GET", blocks_url("/loralab", CORRUPT, weights))
    assert status == 200 and answer["readable"] is False and answer["name"] == CORRUPT, answer
    assert "is truncated" in answer["reason"] and CORRUPT in answer["reason"], answer
    assert str(host.loras_dir) not in answer["reason"] and "blocks" not in answer, answer


def test_other_methods_get_405(host):
    status, answer, headers = get_json(host, "POST", blocks_url("/loralab", TINY))
    assert status == 405 and headers.get("Allow") == "GET", answer
