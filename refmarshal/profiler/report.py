"""The terminal report: the slowest modules, then a summary of where import time went."""

import shutil

from .model import PHASES

SORT_KEYS = {
    "exec": lambda m: m.exec_self,
    "self": lambda m: m.self_time,
    "cumulative": lambda m: m.cumulative,
    "load": lambda m: m.load or 0.0,
    "find": lambda m: m.find or 0.0,
    "name": lambda m: m.name,
}
RUN_TITLES = {"image": "with image", "stock": "stock", "importtime": "-X importtime log"}


def ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def table(run, *, sort="exec", limit=20, compare=None, width=None):
    """Rows for the slowest modules of run.  compare: the stock run, whose load time is shown
    beside the image run's so the saving per module is visible."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    phases = run.has_phases
    if not phases and sort == "exec":
        sort = "self"           # an importtime log has no phases: its self time is the nearest
    modules = sorted(run.modules, key=SORT_KEYS[sort], reverse=sort != "name")
    if limit:
        modules = modules[:limit]
    heads = ["exec self", "load", "find", "cum", "origin"] if phases else ["self", "cum"]
    if compare is not None and phases:
        heads.insert(2, "load stock")
    rows = []
    for m in modules:
        cells = [ms(m.exec_self), ms(m.load), ms(m.find), ms(m.cumulative)] if phases \
            else [ms(m.self_time), ms(m.cumulative)]
        if compare is not None and phases:
            other = compare.first(m.name)
            cells.insert(2, ms(other.load) if other is not None else "-")
        rows.append((cells + [m.origin] if phases else cells, m.name, run.chain(m)[:-1]))
    widths = [max([len(h)] + [len(r[0][i]) for r in rows]) for i, h in enumerate(heads)]
    name_w = min(40, max([6] + [len(r[1]) for r in rows]))
    lead = "  ".join(h.rjust(w) for h, w in zip(heads, widths))
    lines = [f"{lead}  {'module'.ljust(name_w)}  imported via   (times in ms, sorted by {sort})"]
    room = max(20, width - len(lead) - name_w - 4)
    for cells, name, chain in rows:
        cols = "  ".join(c.ljust(w) if heads[i] == "origin" else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
        lines.append(f"{cols}  {_fit(name, name_w).ljust(name_w)}  {_chain(chain, room)}")
    return lines


def _fit(text, width):
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _chain(names, room):
    """The import chain, cut at the target end when it does not fit: the nearest importers
    matter most."""
    text = " > ".join(names)
    while len(text) > room and len(names) > 1:
        names = names[1:]
        text = "… > " + " > ".join(names)
    return _fit(text, room)


def summary(runs):
    """Totals per run, what the image saved, and how much of the rest is execution."""
    lines = []
    phased = [r for r in runs if r.has_phases]
    if phased:
        lines.append(f"{'import time (ms)':<18}{'total':>9}" +
                     "".join(f"{p:>9}" for p in PHASES) + f"{'modules':>9}")
        for r in phased:
            lines.append(f"  {RUN_TITLES[r.label]:<16}{ms(r.total):>9}" +
                         "".join(f"{ms(r.phase_total(p)):>9}" for p in PHASES) +
                         f"{len(r.modules):>9}")
    for r in runs:
        if not r.has_phases:
            lines.append(f"{RUN_TITLES[r.label]}: {len(r.modules)} imports, "
                         f"{ms(r.total)} ms in all (self times only: importtime does not "
                         "split find / load / exec)")
    lines += headline(runs)
    image = next((r for r in runs if r.label == "image"), None)
    if image is not None and image.install_time:
        lines.append(f"opening the image and installing its finder took "
                     f"{ms(image.install_time)} ms before the target started (not counted above; "
                     "the .pth hook pays it at a process's first import)")
    for r in runs:
        searched = sum(1 for m in r.modules if m.find)
        if r.find_overhead and searched:
            lines.append(f"find ({RUN_TITLES[r.label]}): {ms(r.phase_total('find'))} ms, of "
                         f"which the profiler's own hook about {r.find_overhead * 1e6:.2f} us "
                         f"a module ({ms(r.find_overhead * searched)} ms; measured, not "
                         "subtracted)")
    for r in runs:
        if r.plain_target_time:
            lines.append(f"profiler overhead ({RUN_TITLES[r.label]}): "
                         f"{_overhead(r.target_time, r.plain_target_time)} wall, "
                         f"{_overhead(r.target_cpu, r.plain_target_cpu)} CPU time ("
                         + ("one run" if r.repeats == 1 else f"fastest of {r.repeats} runs")
                         + " with and without it)")
    return lines


def _overhead(timed, plain):
    extra = timed - plain
    return f"{ms(timed)} vs {ms(plain)} ms ({extra * 1e3:+.1f} ms, {extra / plain:+.0%})"


def headline(runs):
    """What the image saved, and how much of what is left is execution."""
    lines = []
    by_label = {r.label: r for r in runs}
    image, stock = by_label.get("image"), by_label.get("stock")
    if image is not None and stock is not None and stock.total > 0:
        change = image.total - stock.total
        lines.append(f"the image changed import time by {change * 1e3:+.1f} ms "
                     f"({change / stock.total:+.0%}): load {ms(stock.phase_total('load'))} -> "
                     f"{ms(image.phase_total('load'))} ms, exec "
                     f"{ms(stock.phase_total('exec'))} -> {ms(image.phase_total('exec'))} ms")
    last = image if image is not None else (stock or runs[0])
    if last.has_phases and last.total > 0:
        share = last.phase_total("exec") / last.total
        lines.append(f"{share:.0%} of what is left ({RUN_TITLES[last.label]}) is executing "
                     "module bodies: only changing those modules can remove it")
    return lines


def origins(run):
    counts = {}
    for m in run.modules:
        counts[m.origin] = counts.get(m.origin, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
