// Extending a node type's LiteGraph callbacks without losing what the host (or another extension) set.

/** After `prototype[name]` runs (if any), run `after` with the same `this` and arguments; keep its result. */
export function runAfter(prototype, name, after) {
  const original = prototype[name];
  prototype[name] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}
