// What a LoRA file's safetensors metadata says, as one short line for the editor. Pure, no DOM, no host.
//
// The metadata is the header's `__metadata__` map as the host's `GET /view_metadata/loras` returns it:
// kohya `ss_*` keys and SAI `modelspec.*` keys, every value a string (JSON for the nested ones). Files
// from other tools break that promise in small ways, so every reader here takes any value and never throws.

export const SEPARATOR = " · ";
export const MAX_LINE_WORDS = 3; // trigger words or tags named on the line; the tooltip has them all
export const MAX_TITLE_TAGS = 10;

/** An info object for the states that have no metadata to describe; `line` is what the node shows. */
const info = (state, line, title) => Object.freeze({ state, line, title, fields: null });
export const LOADING_INFO = info("loading", "reading metadata…", "Reading the file's metadata from the host");

/** The host route for one file's metadata; null for a name that cannot be sent (an unpaired surrogate). */
export function metadataUrl(name) {
  try {
    return `/view_metadata/loras?filename=${encodeURIComponent(name)}`;
  } catch (e) {
    if (e instanceof URIError) return null;
    throw e;
  }
}

/** The host's route answers only for names ending in ".safetensors" (case-sensitive, as the host checks). */
export function hasReadableMetadata(name) {
  return typeof name === "string" && name.endsWith(".safetensors");
}

/** A metadata value as trimmed text; numbers and booleans (from non-kohya writers) as their text. */
function text(value) {
  if (typeof value === "string") return value.trim();
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return "";
}

const isRecord = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

/** A JSON-valued metadata entry parsed, or null when it is missing or not valid JSON. */
export function parseJsonValue(value) {
  if (typeof value !== "string") return isRecord(value) || Array.isArray(value) ? value : null;
  if (value.trim() === "") return null;
  try {
    return JSON.parse(value);
  } catch {
    return null; // a truncated or hand-edited entry describes nothing; the other keys still count
  }
}

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** "8.0" -> "8", "0.50" -> "0.5", 1e-3 -> "0.001"; "Dynamic" (kohya's resized files) -> "dynamic"; else null. */
export function formatNumber(value) {
  const raw = text(value);
  if (raw.toLowerCase() === "dynamic") return "dynamic";
  if (!NUMBER.test(raw)) return null;
  const n = Number(raw);
  return Number.isFinite(n) ? String(Number(n.toPrecision(4))) : null;
}

// Base model families, matched against `modelspec.architecture` (before its "/lora") or kohya's
// `ss_base_model_version`; the first match wins, so the more specific patterns come first.
const BASE_MODELS = [
  [/^(stable-diffusion-xl-v1-refiner|sdxl_refiner)/, "SDXL refiner"],
  [/^(stable-diffusion-xl|sdxl)/, "SDXL"],
  [/^(stable-diffusion-(v)?3[-.]5|sd3[-._]?5)/, "SD3.5"],
  [/^(stable-diffusion-(v)?3|sd3)/, "SD3"],
  [/^(stable-diffusion-v2|sd_?v?2)/, "SD2"],
  [/^(stable-diffusion-v1|sd_?v?1)/, "SD1.5"],
  [/^chroma/, "Chroma"],
  [/^flux/, "Flux"],
  [/^lumina/, "Lumina"],
  [/^hunyuan-?image/, "HunyuanImage"],
  [/^z-?image/, "Z-Image"],
];

const MAX_UNKNOWN_BASE = 24;

function baseLabel(value) {
  const stated = text(value).split("/")[0].trim();
  if (!stated) return null;
  const match = BASE_MODELS.find(([pattern]) => pattern.test(stated.toLowerCase()));
  if (match) return match[1];
  // A family this list does not know is still worth naming as the file does, kept short.
  return stated.length > MAX_UNKNOWN_BASE ? `${stated.slice(0, MAX_UNKNOWN_BASE - 1)}…` : stated;
}

/** "SD1.5", "SDXL", "SD3", "Flux", ...: from modelspec.architecture, ss_base_model_version, or old kohya's ss_v2. */
export function baseModelLabel(metadata) {
  const stated = baseLabel(metadata["modelspec.architecture"]) ?? baseLabel(metadata.ss_base_model_version);
  if (stated) return stated;
  // kohya files from before SDXL only say whether the base was SD2.
  const v2 = text(metadata.ss_v2).toLowerCase();
  return v2 === "true" ? "SD2" : v2 === "false" ? "SD1.5" : null;
}

const LYCORIS_ALGOS = {
  lora: "LoCon", locon: "LoCon", loha: "LoHa", lokr: "LoKr", ia3: "(IA)³", dylora: "DyLoRA", glora: "GLoRA",
  full: "full", "diag-oft": "Diag-OFT", boft: "BOFT",
};
const KOHYA_MODULES = { "networks.dylora": "DyLoRA", "networks.oft": "OFT", "networks.lora_fa": "LoRA-FA" };
const truthy = (value) => ["true", "1", "yes"].includes(text(value).toLowerCase());

/** kohya's `ss_network_args` (a JSON object of strings: algo, conv_dim, conv_alpha, dora_wd, ...), or {}. */
function networkArgs(metadata) {
  const args = parseJsonValue(metadata.ss_network_args);
  return isRecord(args) ? args : {};
}

/**
 * The network kind when it is not a plain LoRA: "LyCORIS LoHa", "LyCORIS LoCon + DoRA", kohya's "LoCon"
 * (a LoRA with conv layers), "DyLoRA"; null for a plain LoRA or when the file does not say.
 */
export function networkLabel(metadata) {
  const module = text(metadata.ss_network_module);
  const args = networkArgs(metadata);
  if (module.startsWith("lycoris")) {
    const algo = text(args.algo).toLowerCase(); // unstated (or args unreadable): just "LyCORIS", no guess
    const name = Object.hasOwn(LYCORIS_ALGOS, algo) ? LYCORIS_ALGOS[algo] : algo;
    return ["LyCORIS", name].filter(Boolean).join(" ") + (truthy(args.dora_wd) ? " + DoRA" : "");
  }
  if (Object.hasOwn(KOHYA_MODULES, module)) return KOHYA_MODULES[module];
  if (module.startsWith("networks.lora") && formatNumber(args.conv_dim)) return "LoCon";
  return null;
}

const splitWords = (value) => text(value).split(",").map((w) => w.trim()).filter(Boolean);

/** Case-insensitive de-duplication that keeps the first spelling and the order. */
function unique(words) {
  const seen = new Set();
  return words.filter((w) => {
    const key = w.toLowerCase();
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * The file's trigger words as Load LoRA outputs them (trainer/lora_info.py trigger_words):
 * `modelspec.trigger_phrase` split at commas, then each kohya dataset subset's `class_tokens`.
 */
export function triggerWords(metadata) {
  const words = splitWords(metadata["modelspec.trigger_phrase"]);
  const datasets = parseJsonValue(metadata.ss_datasets);
  for (const dataset of Array.isArray(datasets) ? datasets : []) {
    const subsets = isRecord(dataset) ? dataset.subsets : null;
    for (const subset of Array.isArray(subsets) ? subsets : []) {
      if (isRecord(subset) && typeof subset.class_tokens === "string") words.push(...splitWords(subset.class_tokens));
    }
  }
  return unique(words);
}

/**
 * The `count` most frequent caption tags in kohya's `ss_tag_frequency` ({folder: {tag: images}}), summed
 * over folders; ties keep the file's order. One pass with a small top list: a large dataset's tag
 * table holds tens of thousands of tags and is never sorted whole.
 */
export function topTags(metadata, count = MAX_LINE_WORDS) {
  const folders = parseJsonValue(metadata.ss_tag_frequency);
  if (!isRecord(folders) || count < 1) return [];
  const totals = new Map();
  for (const tags of Object.values(folders)) {
    if (!isRecord(tags)) continue;
    for (const [tag, value] of Object.entries(tags)) {
      const n = typeof value === "number" ? value : Number(text(value) || NaN);
      const word = tag.trim();
      if (word && Number.isFinite(n) && n > 0) totals.set(word, (totals.get(word) ?? 0) + n);
    }
  }
  const top = []; // [tag, total], most frequent first, at most `count`
  for (const entry of totals) {
    if (top.length === count && entry[1] <= top[count - 1][1]) continue;
    let at = top.findIndex((t) => entry[1] > t[1]);
    if (at === -1) at = top.length;
    top.splice(at, 0, entry);
    if (top.length > count) top.pop();
  }
  return top.map(([tag]) => tag);
}

/**
 * The fields the line shows, each null (or []) when the file does not state it:
 * {network, rank, alpha, convRank, convAlpha, base, triggers, tags}. `tags` only when there are no triggers.
 */
export function describeMetadata(metadata) {
  const meta = isRecord(metadata) ? metadata : {};
  const args = networkArgs(meta);
  const triggers = triggerWords(meta);
  return {
    network: networkLabel(meta),
    rank: formatNumber(meta.ss_network_dim),
    alpha: formatNumber(meta.ss_network_alpha),
    convRank: formatNumber(args.conv_dim),
    convAlpha: formatNumber(args.conv_alpha),
    base: baseModelLabel(meta),
    triggers,
    tags: triggers.length ? [] : topTags(meta, MAX_TITLE_TAGS),
  };
}

/** "a, b, c +2": at most `max` words named. */
function wordList(words, max = MAX_LINE_WORDS) {
  const shown = words.slice(0, max).join(", ");
  return words.length > max ? `${shown} +${words.length - max}` : shown;
}

/** "rank 16 · alpha 8 · SD1.5 · trigger: lrlring"; parts the file does not state are left out ("" if all are). */
export function formatLine(fields) {
  const parts = [
    fields.network,
    fields.rank && `rank ${fields.rank}`,
    fields.alpha && `alpha ${fields.alpha}`,
    fields.base,
    fields.triggers.length ? `trigger: ${wordList(fields.triggers)}` : null,
    // Tags are a ranking, not a list: the line names the top few, the tooltip the top ten.
    !fields.triggers.length && fields.tags.length ? `tags: ${fields.tags.slice(0, MAX_LINE_WORDS).join(", ")}` : null,
  ].filter(Boolean);
  return parts.join(SEPARATOR);
}

function formatTitle(name, fields) {
  const conv = fields.convRank && `conv rank ${fields.convRank}${fields.convAlpha ? `, conv alpha ${fields.convAlpha}` : ""}`;
  return [
    name,
    [fields.network, fields.rank && `rank ${fields.rank}`, fields.alpha && `alpha ${fields.alpha}`, conv, fields.base]
      .filter(Boolean).join(SEPARATOR),
    fields.triggers.length ? `trigger words: ${fields.triggers.join(", ")}` : "",
    fields.tags.length ? `most frequent caption tags: ${fields.tags.join(", ")}` : "",
  ].filter(Boolean).join("\n");
}

/** The display info of a file whose metadata was read: {state: "ok" | "none", line, title, fields}. */
export function metadataInfo(name, metadata) {
  const fields = describeMetadata(metadata);
  const line = formatLine(fields);
  if (!line) return noMetadataInfo(name);
  return Object.freeze({ state: "ok", line, title: formatTitle(name, fields), fields });
}

/** A file the host has but whose header names nothing (or is too large for the host's route to read). */
export function noMetadataInfo(name) {
  return info("none", "no metadata", `${name}\nThe file states no rank, alpha, base model or trigger words ` +
    "(no training metadata, or a header over the host's 1 MiB limit for /view_metadata).");
}

export function missingInfo(name) {
  return info("missing", "file not found", `${name} is not in the host's loras folders.`);
}

export function unsupportedInfo(name) {
  return info("none", "no metadata (not a .safetensors file)", `${name}\nOnly .safetensors files carry metadata.`);
}

export function unavailableInfo(name, reason) {
  return info("error", "metadata unavailable", `${name}\nThe host did not answer with the metadata (${reason}).`);
}
