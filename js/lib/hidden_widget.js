// Hiding a node's widget in both of the editor's renderers while it still saves and serialises.

/**
 * Takes `widget` out of sight and out of the layout: `hidden` on the widget (canvas renderer, DOM widgets) and on
 * its own `options` object, changed in place, never replaced: the Vue node renderer (frontend 1.49 and newer) keeps
 * a reference to the object the widget had when the node was made, so a new `options` object hides nothing there.
 */
export function hideWidget(widget) {
  widget.hidden = true;
  (widget.options ??= {}).hidden = true;
  widget.computeSize = () => [0, -4]; // zero height in the canvas renderer's widget layout
}
