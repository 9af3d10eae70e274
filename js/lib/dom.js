// One small DOM builder shared by the pack's DOM widgets.

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
