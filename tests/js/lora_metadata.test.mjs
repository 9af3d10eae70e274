// A LoRA file's metadata -> the editor's info line (js/lib/lora_metadata.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  baseModelLabel, describeMetadata, formatLine, formatNumber, hasReadableMetadata, metadataInfo, metadataUrl,
  networkLabel, parseJsonValue, topTags, triggerWords,
} from "../../js/lib/lora_metadata.js";

/** What trainer/export.py writes for a rank-16, alpha-8 SD1.5 run with trigger "lrlring" (the keys the line reads). */
const OWN_FILE = {
  "ss_network_module": "networks.lora",
  "ss_network_dim": "16",
  "ss_network_alpha": "8.0",
  "ss_network_args": "{}",
  "ss_base_model_version": "sd_v1",
  "ss_v2": "False",
  "ss_tag_frequency": JSON.stringify({ "img": { "lrlring": 12, "ring": 9, "silver": 4 } }),
  "ss_datasets": JSON.stringify([{ num_train_images: 12, resolution: [512, 512], subsets: [{ class_tokens: "lrlring" }] }]),
  "modelspec.architecture": "stable-diffusion-v1/lora",
  "modelspec.trigger_phrase": "lrlring",
};

const line = (metadata) => metadataInfo("x.safetensors", metadata).line;

test("our own trained file reads as the issue's example line", () => {
  const info = metadataInfo("lrlring.safetensors", OWN_FILE);
  assert.equal(info.state, "ok");
  assert.equal(info.line, "rank 16 · alpha 8 · SD1.5 · trigger: lrlring");
  assert.match(info.title, /^lrlring\.safetensors\n/);
  assert.match(info.title, /trigger words: lrlring/);
});

test("missing keys are left out of the line; nothing known reads 'no metadata'", () => {
  assert.equal(line({ ss_network_dim: "4" }), "rank 4");
  assert.equal(line({ ss_network_alpha: "1" }), "alpha 1");
  assert.equal(line({ "modelspec.architecture": "flux-1-dev/lora" }), "Flux");
  assert.equal(line({ "modelspec.trigger_phrase": "zxq" }), "trigger: zxq");
  for (const metadata of [{}, { format: "pt" }, { ss_network_dim: "", ss_network_alpha: "None" }, null, [], "text", 42]) {
    const info = metadataInfo("plain.safetensors", metadata);
    assert.equal(info.state, "none", JSON.stringify(metadata));
    assert.equal(info.line, "no metadata");
    assert.match(info.title, /^plain\.safetensors\n/);
  }
});

test("alpha and rank: float strings, numbers, kohya's 'Dynamic'; junk is left out", () => {
  const cases = [["8.0", "8"], ["8", "8"], [" 4 ", "4"], ["0.5", "0.5"], ["0.0625", "0.0625"], ["1.0e-1", "0.1"],
    ["1E-3", "0.001"], ["16.000001", "16"], ["-1", "-1"], [8, "8"], [0.25, "0.25"], ["Dynamic", "dynamic"]];
  for (const [raw, shown] of cases) assert.equal(formatNumber(raw), shown, JSON.stringify(raw));
  for (const raw of ["", "  ", "None", "abc", "8a", "NaN", "Infinity", "0x10", "1e999", null, undefined, {}, [8]]) {
    assert.equal(formatNumber(raw), null, JSON.stringify(raw));
  }
  assert.equal(line({ ss_network_dim: "32", ss_network_alpha: "16.0" }), "rank 32 · alpha 16");
  assert.equal(line({ ss_network_dim: "Dynamic", ss_network_alpha: "Dynamic" }), "rank dynamic · alpha dynamic");
});

test("base model labels from modelspec.architecture, ss_base_model_version, then old kohya's ss_v2", () => {
  const byArchitecture = {
    "stable-diffusion-v1/lora": "SD1.5", "stable-diffusion-v2-512/lora": "SD2", "stable-diffusion-v2-768-v/lora": "SD2",
    "stable-diffusion-xl-v1-base/lora": "SDXL", "stable-diffusion-xl-v1-refiner/lora": "SDXL refiner",
    "stable-diffusion-3-medium/lora": "SD3", "stable-diffusion-3/lora": "SD3", "stable-diffusion-3-5-large/lora": "SD3.5",
    "stable-diffusion-v3.5-medium/lora": "SD3.5", "flux-1-dev/lora": "Flux", "flux-1-schnell/lora": "Flux",
    "flux-1/lora": "Flux", "chroma/lora": "Chroma", "lumina-2/lora": "Lumina", "Stable-Diffusion-XL-v1-Base/LoRA": "SDXL",
  };
  for (const [arch, label] of Object.entries(byArchitecture)) {
    assert.equal(baseModelLabel({ "modelspec.architecture": arch }), label, arch);
  }
  const byVersion = { sd_v1: "SD1.5", sd_v2: "SD2", sd_v2_v: "SD2", "sdxl_base_v1-0": "SDXL", "sdxl_base_v0-9": "SDXL",
    sd3: "SD3", flux1: "Flux" };
  for (const [version, label] of Object.entries(byVersion)) {
    assert.equal(baseModelLabel({ ss_base_model_version: version }), label, version);
  }
  // The architecture wins; an unknown family is named as the file names it, kept short.
  assert.equal(baseModelLabel({ "modelspec.architecture": "flux-1-dev/lora", ss_base_model_version: "sd_v1" }), "Flux");
  assert.equal(baseModelLabel({ "modelspec.architecture": "pixart-sigma/lora" }), "pixart-sigma");
  assert.equal(baseModelLabel({ "modelspec.architecture": "a-very-long-architecture-name-nobody-knows/lora" }),
    "a-very-long-architectur…");
  assert.equal(baseModelLabel({ "modelspec.architecture": "  ", ss_base_model_version: "sdxl_base_v1-0" }), "SDXL");
  assert.equal(baseModelLabel({ ss_v2: "True" }), "SD2");
  assert.equal(baseModelLabel({ ss_v2: "False" }), "SD1.5");
  assert.equal(baseModelLabel({}), null);
});

test("network kinds: LyCORIS algorithms, DoRA, kohya LoCon; a plain LoRA names none", () => {
  const lycoris = (args) => ({ ss_network_module: "lycoris.kohya", ss_network_args: JSON.stringify(args) });
  assert.equal(networkLabel(lycoris({ algo: "loha", conv_dim: "4" })), "LyCORIS LoHa");
  assert.equal(networkLabel(lycoris({ algo: "lokr", factor: "-1" })), "LyCORIS LoKr");
  assert.equal(networkLabel(lycoris({ algo: "locon" })), "LyCORIS LoCon");
  assert.equal(networkLabel(lycoris({ algo: "lora", dora_wd: "True" })), "LyCORIS LoCon + DoRA");
  assert.equal(networkLabel(lycoris({ algo: "newalgo" })), "LyCORIS newalgo");
  assert.equal(networkLabel(lycoris({ algo: "constructor" })), "LyCORIS constructor", "no prototype lookups");
  assert.equal(networkLabel(lycoris({})), "LyCORIS", "no algorithm stated: no guess");
  assert.equal(networkLabel({ ss_network_module: "lycoris.kohya", ss_network_args: '{"algo": "loha"' }), "LyCORIS");
  assert.equal(networkLabel({ ss_network_module: "networks.lora", ss_network_args: '{"conv_dim": "8"}' }), "LoCon");
  assert.equal(networkLabel({ ss_network_module: "networks.dylora" }), "DyLoRA");
  for (const module of ["networks.lora", "networks.lora_flux", "networks.lora_sd3", "", "toString"]) {
    assert.equal(networkLabel({ ss_network_module: module, ss_network_args: "{}" }), null, module);
  }
  const loha = { ...lycoris({ algo: "loha", conv_dim: "4", conv_alpha: "1" }), ss_network_dim: "8",
    ss_network_alpha: "4", ss_base_model_version: "sdxl_base_v1-0" };
  assert.equal(line(loha), "LyCORIS LoHa · rank 8 · alpha 4 · SDXL");
  assert.match(metadataInfo("loha.safetensors", loha).title, /conv rank 4, conv alpha 1/);
});

test("trigger words as Load LoRA outputs them: trigger phrase, then class tokens, each once", () => {
  assert.deepEqual(triggerWords({ "modelspec.trigger_phrase": " a, b ,,A " }), ["a", "b"]);
  const datasets = JSON.stringify([{ subsets: [{ class_tokens: "b, c" }, { class_tokens: null }, "junk"] },
    { subsets: "junk" }, null]);
  assert.deepEqual(triggerWords({ "modelspec.trigger_phrase": "a, b", ss_datasets: datasets }), ["a", "b", "c"]);
  assert.deepEqual(triggerWords({ ss_datasets: '[{"subsets": [{"class_tokens": "sks"' }), [], "truncated JSON");
  assert.deepEqual(triggerWords({ "modelspec.trigger_phrase": "" }), []);
  assert.equal(line({ "modelspec.trigger_phrase": "w1, w2, w3, w4, w5" }), "trigger: w1, w2, w3 +2");
  assert.match(metadataInfo("x.safetensors", { "modelspec.trigger_phrase": "w1, w2, w3, w4, w5" }).title,
    /trigger words: w1, w2, w3, w4, w5/);
});

test("without trigger words the most frequent caption tags are shown, summed over folders", () => {
  const frequency = { "10_x": { cat: 5, dog: 2, "  ": 9 }, "5_y": { dog: 4, bird: 1, fish: 1 } };
  const metadata = { ss_tag_frequency: JSON.stringify(frequency) };
  assert.deepEqual(topTags(metadata, 3), ["dog", "cat", "bird"], "ties keep the file's order");
  assert.equal(line(metadata), "tags: dog, cat, bird");
  assert.match(metadataInfo("x.safetensors", metadata).title, /most frequent caption tags: dog, cat, bird, fish$/);
  assert.deepEqual(describeMetadata({ ...metadata, "modelspec.trigger_phrase": "sks" }).tags, [], "triggers win");
  assert.equal(line({ ...metadata, "modelspec.trigger_phrase": "sks" }), "trigger: sks");
  // Counts as strings (some tools), junk counts and junk folders are skipped.
  const messy = { a: { x: "3", y: "lots", z: -1, w: 0, v: null }, b: [1, 2], c: "junk", d: { y: 2 } };
  assert.deepEqual(topTags({ ss_tag_frequency: JSON.stringify(messy) }, 5), ["x", "y"]);
  for (const raw of ['{"a": {"x": 1', "not json", "[1, 2]", "null", "", undefined, "42"]) {
    assert.deepEqual(topTags({ ss_tag_frequency: raw }), [], String(raw));
  }
});

test("a huge tag table (a large dataset's) is summed in one pass and gives the true top tags", () => {
  const folders = {};
  for (let f = 0; f < 4; f += 1) {
    const tags = {};
    for (let t = 0; t < 50_000; t += 1) tags[`tag_${f}_${t}`] = (t * 7919) % 97 + 1;
    tags.common = 1000 + f;
    tags[`rare_${f}`] = 1;
    folders[`${f}_folder`] = tags;
  }
  folders["1_folder"]["tag_0_96"] = 5000; // also in folder 0: summed with it
  const raw = JSON.stringify(folders);
  // Over 3 MB: more than the host's route passes today (it answers 404 above a 1 MiB header), so a
  // route that passes more (or a later host) cannot make the editor stall.
  assert.ok(raw.length > 3_000_000, `${raw.length} characters`);
  const start = performance.now();
  const tags = topTags({ ss_tag_frequency: raw }, 3);
  const ms = performance.now() - start;
  // The reference: sum, then a full stable sort by count.
  const totals = new Map();
  for (const table of Object.values(folders)) for (const [tag, n] of Object.entries(table)) totals.set(tag, (totals.get(tag) ?? 0) + n);
  const sorted = [...totals].sort((a, b) => b[1] - a[1]).map(([tag]) => tag);
  assert.deepEqual(tags, sorted.slice(0, 3));
  assert.deepEqual(tags.slice(0, 2), ["tag_0_96", "common"]);
  assert.deepEqual(topTags({ ss_tag_frequency: raw }, 10), sorted.slice(0, 10));
  assert.ok(ms < 3000, `took ${ms.toFixed(0)} ms`);
  assert.equal(line({ ss_network_dim: "8", ss_tag_frequency: raw }), `rank 8 · tags: ${sorted.slice(0, 3).join(", ")}`);
});

test("JSON-valued entries: malformed text is null, objects pass through", () => {
  for (const raw of ["", "  ", "{", "{'a': 1}", "[1,", undefined, null, 3]) assert.equal(parseJsonValue(raw), null, String(raw));
  assert.deepEqual(parseJsonValue('{"algo": "loha"}'), { algo: "loha" });
  assert.deepEqual(parseJsonValue({ algo: "loha" }), { algo: "loha" }, "a writer that stored an object");
  assert.equal(line({ ss_network_dim: "4", ss_network_args: "{not json", ss_tag_frequency: "{", ss_datasets: "[" }),
    "rank 4");
});

test("non-string values from other writers still read", () => {
  assert.equal(line({ ss_network_dim: 16, ss_network_alpha: 8.0, ss_v2: false, "modelspec.trigger_phrase": 7 }),
    "rank 16 · alpha 8 · SD1.5 · trigger: 7");
});

test("file names with spaces, unicode, subfolders and URL syntax are encoded and decode back", () => {
  const names = ["my lora.safetensors", "ünïcødé 漢字 🎨.safetensors", "styles/a b/c.safetensors", "win\\sub\\x.safetensors",
    "a#1.safetensors", "a&b=c?.safetensors", "50%+off.safetensors", "plus+sign.safetensors"];
  for (const name of names) {
    const url = metadataUrl(name);
    assert.match(url, /^\/view_metadata\/loras\?filename=[A-Za-z0-9%._~!*'()-]+$/, url);
    assert.equal(new URL(url, "http://host").searchParams.get("filename"), name, "the host reads the same name");
  }
  assert.equal(metadataUrl("plus+sign.safetensors"), "/view_metadata/loras?filename=plus%2Bsign.safetensors",
    "a raw + would be read as a space");
  assert.equal(metadataUrl("bad\udcff.safetensors"), null, "a lone surrogate (a non-UTF-8 file name) cannot be sent");
});

test("only .safetensors names are asked for (the host's route refuses the rest)", () => {
  assert.ok(hasReadableMetadata("x.safetensors"));
  assert.ok(hasReadableMetadata("sub/x y.safetensors"));
  for (const name of ["x.pt", "x.ckpt", "x.SAFETENSORS", "x.safetensors.bak", "", null, undefined, 3]) {
    assert.equal(hasReadableMetadata(name), false, String(name));
  }
});

test("formatLine leaves out unknown parts and says nothing for nothing", () => {
  const none = { network: null, rank: null, alpha: null, base: null, triggers: [], tags: [] };
  assert.equal(formatLine(none), "");
  assert.equal(formatLine({ ...none, network: "LyCORIS LoKr", base: "Flux" }), "LyCORIS LoKr · Flux");
});
