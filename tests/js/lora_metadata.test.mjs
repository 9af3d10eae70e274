// The host's summary of a LoRA file -> the editor's info line (js/lib/lora_metadata.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  algorithmText, baseModelText, formatLine, formatNumber, infoUrl, invalidInfo, isReadableName, rankText,
  statedBaseLabel, summaryInfo,
} from "../../js/lib/lora_metadata.js";

/** What GET /loralab/loras/info answers for a rank-16, alpha-8 SD1.5 kohya file with trigger "lrlring". */
const OWN_FILE = {
  source: "lrlring.safetensors", formats: ["kohya_ldm"], format_names: ["kohya LoRA (LDM/SGM module names)"],
  ranks: [16], alphas: [8], alpha: 8, modules: 4, module_kinds: { lora: 4 }, base_model: "sd_v1",
  base_model_hint: "sd1", base_model_hint_label: "SD 1.x", trigger_words: ["lrlring"], unrecognised_keys: 0,
};
/** A PEFT file without metadata: rank from the tensors, no alpha, the base model guessed. */
const BARE_PEFT = {
  ...OWN_FILE, formats: ["peft"], format_names: ["PEFT / diffusers (lora_A/lora_B)"], ranks: [4], alphas: [],
  alpha: null, base_model: null, base_model_hint: "sdxl", base_model_hint_label: "SDXL", trigger_words: [],
};

const line = (summary) => summaryInfo("x.safetensors", summary).line;

test("our own trained file reads as the issue's example line, with everything in the tooltip", () => {
  const info = summaryInfo("lrlring.safetensors", OWN_FILE);
  assert.equal(info.state, "ok");
  assert.equal(info.line, "rank 16 · alpha 8 · SD1.5 · trigger: lrlring");
  assert.equal(info.title, "lrlring.safetensors\nkohya LoRA (LDM/SGM module names)\nrank 16 · alpha 8 · 4 layers\n" +
    "base model: sd_v1\ntrigger words: lrlring");
});

test("a file without metadata shows its rank and a guessed base model", () => {
  const info = summaryInfo("bare.safetensors", BARE_PEFT);
  assert.equal(info.line, "rank 4 · SDXL?");
  assert.match(info.title, /base model: not stated; the layer shapes look like SDXL/);
  assert.equal(line({ ...BARE_PEFT, base_model_hint: null, base_model_hint_label: null }), "rank 4", "no guess");
});

test("mixed ranks read as a range; mixed or missing alphas are left out", () => {
  assert.equal(rankText([4, 16, 8]), "4–16");
  assert.equal(rankText([8]), "8");
  for (const ranks of [[], null, undefined, "16", ["16"]]) assert.equal(rankText(ranks), null, JSON.stringify(ranks));
  const mixed = { ...OWN_FILE, ranks: [4, 16], alphas: [1, 4], alpha: null };
  assert.equal(line(mixed), "rank 4–16 · SD1.5 · trigger: lrlring");
  assert.match(summaryInfo("x.safetensors", mixed).title, /rank 4–16 · alpha 1, 4 · 4 layers/);
  assert.equal(line({ ...OWN_FILE, alpha: 0.0625 }), "rank 16 · alpha 0.0625 · SD1.5 · trigger: lrlring");
});

test("numbers: finite numbers shortened; anything else is no number", () => {
  for (const [raw, shown] of [[8, "8"], [8.0, "8"], [0.5, "0.5"], [16.000001, "16"], [1e-3, "0.001"], [-1, "-1"]]) {
    assert.equal(formatNumber(raw), shown, String(raw));
  }
  for (const raw of [null, undefined, NaN, Infinity, "8", {}, [8]]) assert.equal(formatNumber(raw), null, String(raw));
});

test("base model: the stated one as a family label, else the host's guess marked '?'", () => {
  const byStated = {
    sd_v1: "SD1.5", sd_v2: "SD2", sd_v2_v: "SD2", "sdxl_base_v1-0": "SDXL", sd3: "SD3", flux1: "Flux",
    "stable-diffusion-v1/lora": "SD1.5", "stable-diffusion-xl-v1-refiner/lora": "SDXL refiner",
    "stable-diffusion-3-5-large/lora": "SD3.5", "flux-1-dev/lora": "Flux", "chroma/lora": "Chroma",
    "Stable-Diffusion-XL-v1-Base/LoRA": "SDXL", "pixart-sigma/lora": "pixart-sigma",
    "a-very-long-architecture-name-nobody-knows/lora": "a-very-long-architectur…",
  };
  for (const [stated, label] of Object.entries(byStated)) assert.equal(statedBaseLabel(stated), label, stated);
  for (const stated of ["", "  ", null, 42]) assert.equal(statedBaseLabel(stated), null, String(stated));
  assert.equal(baseModelText({ base_model: "sd_v1", base_model_hint_label: "SDXL" }), "SD1.5", "stated wins");
  assert.equal(baseModelText({ base_model: null, base_model_hint_label: "SD 1.x" }), "SD 1.x?");
  assert.equal(baseModelText({ base_model: " ", base_model_hint_label: null }), null);
  assert.equal(baseModelText({}), null);
});

test("LyCORIS algorithms (and DoRA) are named from the format names; plain LoRA formats are not", () => {
  assert.equal(algorithmText(["LyCORIS LoHa"]), "LyCORIS LoHa");
  assert.equal(algorithmText(["kohya LoRA (diffusers module names)", "LyCORIS LoCon (3x3 conv)"]), "LyCORIS LoCon");
  assert.equal(algorithmText(["LyCORIS LoKr", "DoRA"]), "LyCORIS LoKr + DoRA");
  assert.equal(algorithmText(["kohya LoRA (LDM/SGM module names)", "PEFT / diffusers (lora_A/lora_B)"]), null);
  for (const names of [[], null, "LyCORIS LoHa", [null, 3]]) assert.equal(algorithmText(names), null, String(names));
  const loha = { ...OWN_FILE, formats: ["loha"], format_names: ["LyCORIS LoHa"], ranks: [8], alphas: [4], alpha: 4,
    base_model: "sdxl_base_v1-0", trigger_words: [] };
  assert.equal(line(loha), "LyCORIS LoHa · rank 8 · alpha 4 · SDXL");
});

test("trigger words: the first three on the line, all in the tooltip; none leaves the part out", () => {
  const many = { ...OWN_FILE, trigger_words: ["w1", "w2", "w3", "w4", "w5"] };
  assert.equal(line(many), "rank 16 · alpha 8 · SD1.5 · trigger: w1, w2, w3, …");
  assert.match(summaryInfo("x.safetensors", many).title, /trigger words: w1, w2, w3, w4, w5$/);
  const words = (trigger_words) => line({ ...OWN_FILE, trigger_words });
  assert.equal(words(["a", "b", "c"]), "rank 16 · alpha 8 · SD1.5 · trigger: a, b, c");
  assert.equal(words([]), "rank 16 · alpha 8 · SD1.5");
  assert.equal(words(["", "  ", 7, "sks"]), "rank 16 · alpha 8 · SD1.5 · trigger: sks");
});

test("a summary that states nothing, or an answer that is no summary, says so", () => {
  const empty = summaryInfo("diff.safetensors", { format_names: ["full weight difference"], ranks: [], alpha: null });
  assert.equal(empty.state, "none");
  assert.equal(empty.line, "no rank, alpha or base model");
  assert.match(empty.title, /^diff\.safetensors\nfull weight difference/);
  assert.equal(formatLine({}), "");
  for (const body of [null, [], "text", 42]) assert.equal(summaryInfo("x.safetensors", body).state, "error");
});

test("a file the host refuses reads 'not a LoRA' with the reason, without repeating the name", () => {
  const name = "sub/bad file.safetensors";
  const info = invalidInfo(name, `'${name}' is truncated: only 20 bytes. The download was interrupted`);
  assert.equal(info.state, "invalid");
  assert.equal(info.line, "not a LoRA: is truncated: only 20 bytes. The download was interrupted");
  assert.equal(info.title, `${name}\n'${name}' is truncated: only 20 bytes. The download was interrupted`);
  assert.equal(invalidInfo(name, `'${name}': module 'x' mixes LoRA and LoHa`).line,
    "not a LoRA: module 'x' mixes LoRA and LoHa");
  assert.equal(invalidInfo(name, "Cannot read it").line, "not a LoRA: Cannot read it");
  assert.equal(invalidInfo(name, undefined).line, "not a LoRA: the host could not read it");
});

test("file names with spaces, unicode, subfolders and URL syntax are encoded and decode back", () => {
  const names = ["my lora.safetensors", "ünïcødé 漢字 🎨.safetensors", "styles/a b/c.safetensors", "win\\sub\\x.safetensors",
    "a#1.safetensors", "a&b=c?.safetensors", "50%+off.safetensors", "plus+sign.safetensors"];
  for (const name of names) {
    const url = infoUrl(name);
    assert.match(url, /^\/loralab\/loras\/info\?name=[A-Za-z0-9%._~!*'()-]+$/, url);
    assert.equal(new URL(url, "http://host").searchParams.get("name"), name, "the host reads the same name");
  }
  assert.equal(infoUrl("plus+sign.safetensors"), "/loralab/loras/info?name=plus%2Bsign.safetensors",
    "a raw + would be read as a space");
  assert.equal(infoUrl("50%.safetensors"), "/loralab/loras/info?name=50%25.safetensors");
  assert.equal(infoUrl("bad\udcff.safetensors"), null, "a lone surrogate (a non-UTF-8 file name) cannot be sent");
});

test("pickle files are not asked for (the host refuses to open them); every other name is", () => {
  for (const name of ["x.safetensors", "sub/x y.safetensors", "x.sft", "x.SAFETENSORS", "x.pt.safetensors"]) {
    assert.ok(isReadableName(name), name);
  }
  for (const name of ["x.pt", "x.ckpt", "x.PTH", "x.bin", "x.pkl", "x.pickle", null, undefined, 3]) {
    assert.equal(isReadableName(name), false, String(name));
  }
});
