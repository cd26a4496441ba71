"""A self-contained SVG icicle graph of one or two runs (no scripts, no external resources).

Each module is a bar as wide as its cumulative import time; its nested imports hang below it
from its left edge, and the rest of its width -- its own time -- is coloured by phase (find,
load, exec, other).  Runs share one time scale, so the image run is visibly shorter than the
stock run by what the image removed.  Hovering a bar shows its numbers (an SVG <title>).
"""

from xml.sax.saxutils import escape

from .model import PHASES
from .report import RUN_TITLES, headline, ms

WIDTH = 1400
MARGIN = 12
ROW = 18
FONT = 11
CHAR = 6.7                  # advance of the monospace font at FONT px
MIN_BAR = 1.0               # narrower bars are not drawn (nor their children): a pixel
MAX_DEPTH = 48
GAP = 0.6
COLOURS = {"find": "#b39ddb", "load": "#64b5f6", "exec": "#ffb74d", "other": "#cfd8dc",
           "self": "#ffb74d", "nested": "#ece8e1", "run": "#d7ccc8"}
LEGEND = {"find": "find (finders on sys.meta_path)",
          "load": "load (read + unmarshal, or from the image)",
          "exec": "exec (module body)", "other": "other (import bookkeeping)",
          "nested": "time in nested imports (shown below)"}


def render(runs, title):
    """SVG text for runs (1 or 2 Runs) under title."""
    scale = (WIDTH - 2 * MARGIN) / max(max(r.total for r in runs), 1e-9)
    phased = any(r.has_phases for r in runs)
    out = []
    y = 28
    out.append(_text(MARGIN, y, title, size=16, weight="bold"))
    y += 20
    for line in [_totals(r) for r in runs] + headline(runs):
        out.append(_text(MARGIN, y, line, size=12))
        y += 17
    y = _legend(out, y, phased)
    for run in runs:
        y += 14
        out.append(_text(MARGIN, y, f"{RUN_TITLES[run.label]}: {ms(run.total)} ms of imports, "
                                    f"{len(run.modules)} modules" + _status(run),
                         size=12, weight="bold"))
        y += 6
        y = _icicle(out, run, y, scale)
    height = y + MARGIN
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans Mono, Menlo, Consolas, '
            f'monospace" font-size="{FONT}">\n'
            f'<title>{escape(title)}</title>\n'
            f'<rect width="100%" height="100%" fill="#ffffff"/>\n')
    return head + "\n".join(out) + "\n</svg>\n"


def write(path, runs, title):
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render(runs, title))


def _totals(run):
    if not run.has_phases:
        return f"{RUN_TITLES[run.label]}: {ms(run.total)} ms"
    parts = ", ".join(f"{p} {ms(run.phase_total(p))}" for p in PHASES)
    return f"{RUN_TITLES[run.label]}: {ms(run.total)} ms ({parts})"


def _status(run):
    if run.status == "ok":
        return ""
    return f" -- target {'raised' if run.status == 'raised' else 'exited'}: {run.message}"


def _legend(out, y, phased):
    keys = [*PHASES, "nested"] if phased else ["self", "nested"]
    x = MARGIN
    for key in keys:
        label = LEGEND.get(key, "self time (importtime logs do not split phases)")
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" '
                   f'fill="{COLOURS[key]}" stroke="#888" stroke-width="0.5"/>')
        out.append(_text(x + 16, y, label))
        x += 16 + len(label) * CHAR + 18
    return y + 8


def _icicle(out, run, y, scale):
    """Draw the run's tree from y; returns the y below its deepest row."""
    top = y + 4
    bottom = [top + ROW]
    total_w = run.total * scale
    out.append(_bar(MARGIN, top, total_w, COLOURS["run"],
                    f"all imports {ms(run.total)} ms",
                    f"{RUN_TITLES[run.label]}: {ms(run.total)} ms in {len(run.modules)} imports"))
    x = MARGIN
    for i in run.roots:
        x += _node(out, run, i, x, 1, top, scale, bottom)
    return bottom[0]


def _node(out, run, index, x, depth, top, scale, bottom):
    """Draw module index at (x, depth) and its subtree; returns its width."""
    m = run.modules[index]
    w = m.cumulative * scale
    if w < MIN_BAR or depth > MAX_DEPTH:
        return w
    y = top + depth * ROW
    bottom[0] = max(bottom[0], y + ROW)
    label = f"{m.name} {ms(m.cumulative)}"
    out.append(f"<g><title>{escape(_tooltip(run, m))}</title>")
    inner = w - GAP if w > 3 * GAP else w       # a white gap separates neighbours
    out.append(f'<rect x="{x:.1f}" y="{y}" width="{inner:.1f}" height="{ROW - 1}" '
               f'fill="{COLOURS["nested"]}"/>')
    # own time at the right end, by phase; nested imports occupy the left part, drawn below
    seg_x = max(x, x + inner - m.self_time * scale)
    segments = [(p, m.phase(p)) for p in PHASES] if m.find is not None \
        else [("self", m.self_time)]
    for phase, seconds in segments:
        seg_w = min(max(0.0, seconds or 0.0) * scale, x + inner - seg_x)
        if seg_w >= 0.1:
            out.append(f'<rect x="{seg_x:.1f}" y="{y}" width="{seg_w:.1f}" '
                       f'height="{ROW - 1}" fill="{COLOURS[phase]}"/>')
        seg_x += seg_w
    fitted = _fit_label(label, m.name, w)
    if fitted:
        out.append(_text(x + 3, y + ROW - 5, fitted))
    out.append("</g>")
    child_x = x
    for c in m.children:
        child_x += _node(out, run, c, child_x, depth + 1, top, scale, bottom)
    return w


def _fit_label(label, name, width):
    room = int((width - 5) / CHAR)
    if room >= len(label):
        return label
    if room >= len(name):
        return name
    if room >= 4:
        return name[:room - 1] + "…"
    return ""


def _tooltip(run, m):
    """The bar's numbers; the chain above it is the picture itself, so only the importer."""
    phases = ", ".join(f"{p} {ms(m.phase(p))}" for p in PHASES) if m.find is not None else ""
    return (f"{m.name}: cumulative {ms(m.cumulative)} ms, self {ms(m.self_time)} ms"
            + (f" ({phases})" if phases else "")
            + f"; origin {m.origin}; first imported by {m.importer}"
            + ("" if m.ok else "; import failed"))


def _bar(x, y, w, fill, label, tip):
    return (f'<g><title>{escape(tip)}</title><rect x="{x}" y="{y}" width="{w:.1f}" '
            f'height="{ROW - 1}" fill="{fill}"/>' + _text(x + 3, y + ROW - 5, label) + "</g>")


def _text(x, y, text, size=None, weight=None):
    attrs = (f' font-size="{size}"' if size else "") + (f' font-weight="{weight}"'
                                                         if weight else "")
    return f'<text x="{x:.1f}" y="{y}" fill="#1a1a1a"{attrs}>{escape(text)}</text>'
