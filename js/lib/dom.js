// One small DOM builder shared by the pack's DOM widgets, and its SVG twin for their charts.

const SVG_NS = "http://www.w3.org/2000/svg";

/** An element of `tag` with properties (or attributes, or `dataset`) set and children appended. */
export function el(doc, tag, props = {}, children = []) {
  const node = doc.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

/** An SVG element of `tag` with its attributes set. */
export function svg(doc, tag, attrs = {}) {
  const node = doc.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}
