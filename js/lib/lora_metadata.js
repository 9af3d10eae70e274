// What a LoRA file holds, as one short line for the editor. Pure, no DOM, no host.
//
// The input is the answer of LoRA Lab's `GET /loralab/loras/info?name=` (nodes/routes.py): the summary
// trainer/lora_info.py makes of the parsed file — formats, ranks and alphas read from the tensors, the base
// model the metadata states (or a guess from layer shapes), trigger words. Every reader here takes any value
// and never throws: an older or newer host may answer with other fields.

export const SEPARATOR = " · ";
export const MAX_LINE_WORDS = 3; // trigger words named on the line; the tooltip has them all

/** An info object for the states that have no summary to describe; `line` is what the node shows. */
const info = (state, line, title) => Object.freeze({ state, line, title });
export const LOADING_INFO = info("loading", "reading file…", "Reading the LoRA file on the host");

/** The route for one file's info; null for a name that cannot be sent (an unpaired surrogate). */
export function infoUrl(name) {
  try {
    return `/loralab/loras/info?name=${encodeURIComponent(name)}`;
  } catch (e) {
    if (e instanceof URIError) return null;
    throw e;
  }
}

// Pickle formats: the host's reader refuses them, so none is asked for (the line says why without a request).
const PICKLE = /\.(pt|pth|ckpt|bin|pkl|pickle)$/i;

/** Whether the host's reader would open `name` (not a pickle). */
export function isReadableName(name) {
  return typeof name === "string" && !PICKLE.test(name);
}

/** 8 -> "8", 0.5 -> "0.5", 16.000001 -> "16"; anything but a finite number -> null. */
export function formatNumber(value) {
  return typeof value === "number" && Number.isFinite(value) ? String(Number(value.toPrecision(4))) : null;
}

const numbers = (list) => (Array.isArray(list) ? list.filter((n) => formatNumber(n) !== null) : []);
const strings = (list) => (Array.isArray(list) ? list.filter((s) => typeof s === "string" && s.trim()) : []);
const text = (value) => (typeof value === "string" ? value.trim() : "");

/** "16" for one rank, "4–16" for several (lowest to highest), null for none. */
export function rankText(ranks) {
  const values = numbers(ranks);
  if (!values.length) return null;
  const [low, high] = [Math.min(...values), Math.max(...values)];
  return low === high ? formatNumber(low) : `${formatNumber(low)}–${formatNumber(high)}`;
}

// Base model families, matched against the stated base model (kohya's `ss_base_model_version` or
// `modelspec.architecture` before its "/lora"); the first match wins, so the more specific patterns come first.
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

/** "SD1.5", "SDXL", "Flux", ... for a stated base model; an unknown family as stated, kept short; null for none. */
export function statedBaseLabel(value) {
  const stated = text(value).split("/")[0].trim();
  if (!stated) return null;
  const match = BASE_MODELS.find(([pattern]) => pattern.test(stated.toLowerCase()));
  if (match) return match[1];
  return stated.length > MAX_UNKNOWN_BASE ? `${stated.slice(0, MAX_UNKNOWN_BASE - 1)}…` : stated;
}

/** The stated base model's label, else the host's label for its guess marked "?" ("SDXL?"), else null. */
export function baseModelText(summary) {
  const guess = text(summary.base_model_hint_label);
  return statedBaseLabel(summary.base_model) ?? (guess ? `${guess}?` : null);
}

/** "LyCORIS LoHa", "LyCORIS LoCon + DoRA": the LyCORIS algorithms (and DoRA) among the format names; null for none. */
export function algorithmText(formatNames) {
  const shown = strings(formatNames)
    .filter((n) => n.startsWith("LyCORIS ") || n === "DoRA")
    .map((n) => n.replace(/\s*\(.*\)$/, "")); // "LyCORIS LoCon (3x3 conv)" -> "LyCORIS LoCon"
  return shown.length ? [...new Set(shown)].join(" + ") : null;
}

/** "a, b, c, …": at most `max` words named. */
function wordList(words, max = MAX_LINE_WORDS) {
  const shown = words.slice(0, max).join(", ");
  return words.length > max ? `${shown}, …` : shown;
}

/** "rank 16 · alpha 8 · SD1.5 · trigger: lrlring"; parts the summary lacks are left out ("" if all are). */
export function formatLine(summary) {
  const rank = rankText(summary.ranks);
  const alpha = formatNumber(summary.alpha); // null when the file has none or several
  const triggers = strings(summary.trigger_words);
  return [
    algorithmText(summary.format_names),
    rank && `rank ${rank}`,
    alpha && `alpha ${alpha}`,
    baseModelText(summary),
    triggers.length ? `trigger: ${wordList(triggers)}` : null,
  ].filter(Boolean).join(SEPARATOR);
}

function formatTitle(name, summary) {
  const alphas = numbers(summary.alphas).map(formatNumber);
  const triggers = strings(summary.trigger_words);
  const stated = text(summary.base_model);
  const guess = text(summary.base_model_hint_label);
  return [
    name,
    strings(summary.format_names).join(", "),
    [rankText(summary.ranks) && `rank ${rankText(summary.ranks)}`, alphas.length && `alpha ${alphas.join(", ")}`,
      Number.isInteger(summary.modules) && `${summary.modules} layers`].filter(Boolean).join(SEPARATOR),
    stated ? `base model: ${stated}` : guess ? `base model: not stated; the layer shapes look like ${guess}` : "",
    triggers.length ? `trigger words: ${triggers.join(", ")}` : "",
  ].filter(Boolean).join("\n");
}

const isRecord = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

/** The display info of a file the host read: {state: "ok" | "none", line, title}. */
export function summaryInfo(name, summary) {
  if (!isRecord(summary)) return unavailableInfo(name, "the answer is not a summary");
  const line = formatLine(summary);
  if (!line) return info("none", "no rank, alpha or base model", formatTitle(name, summary));
  return info("ok", line, formatTitle(name, summary));
}

/** The host's reader refused the file (readable: false): `message` says why, naming the file; the line says it
 * without the name. */
export function invalidInfo(name, message) {
  const reason = text(message) || "the host could not read it";
  const short = reason.startsWith(`'${name}'`) ? reason.slice(name.length + 2).replace(/^[:\s]+/, "") : reason;
  return info("invalid", `not a LoRA: ${short}`, `${name}\n${reason}`);
}

export function missingInfo(name) {
  return info("missing", "file not found", `${name} is not in the host's loras folders.`);
}

export function unsupportedInfo(name) {
  return info("invalid", "not a LoRA: pickle files are not read", `${name}\nOnly .safetensors files are read; ` +
    "pickle files (.pt, .ckpt, .bin, ...) can run code when opened.");
}

export function unavailableInfo(name, reason) {
  return info("error", "info unavailable", `${name}\nThe host did not describe the file (${reason}).`);
}
