"""``--format html``: one self-contained page per run (inline CSS and SVG, no network resource).

Per target: the status, coverage and what went unjudged, each finding with its source lines and
fix, the notes, and the signal-propagation plot: activation RMS at each layer's output and
gradient RMS reaching it, at init, log scale, layers in execution order, with residual and norm
boundaries and the BL003/BL007 findings marked on the curve. The reporter formats what
``TargetResult`` holds (``signal`` included); it computes nothing about the model.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Sequence

from biaslint.findings import Finding, TargetResult
from biaslint.sources import line_of
from biaslint.version import __version__

# The rules whose findings are about a layer's scale: marked on the activation curve.
MARKED_RULES = ("BL003", "BL007")

_PAGE_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --panel:#f6f8fa;
  --act:#0969da; --grad:#bc4c00; --bad:#cf222e; --warn:#9a6700; --ok:#1a7f37; --norm:#8250df; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
  background: var(--bg); margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 0 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
code, pre { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.muted { color: var(--muted); }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid var(--line); padding: 4px 10px 4px 0; text-align: left;
  vertical-align: top; }
section.target { border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px;
  margin: 18px 0; }
.status { display: inline-block; border-radius: 12px; padding: 1px 10px; font-weight: 600;
  font-size: 12px; color: #fff; }
.status.clean { background: var(--ok); } .status.findings { background: var(--warn); }
.status.error, .status.incomplete { background: var(--bad); }
article.finding { border-left: 4px solid var(--warn); background: var(--panel);
  padding: 8px 12px; margin: 10px 0; border-radius: 0 6px 6px 0; }
article.finding.error { border-left-color: var(--bad); }
article.finding.info { border-left-color: var(--act); }
.finding .head { font-weight: 600; } .finding .where { color: var(--muted); }
pre.source { background: #fff; border: 1px solid var(--line); padding: 6px 8px; margin: 6px 0;
  overflow-x: auto; } pre.source .hit { background: #fff8c5; display: inline-block;
  min-width: 100%; }
.fix { margin-top: 4px; } .fix code { background: #fff; padding: 0 4px; }
ul.unjudged li { color: var(--bad); }
svg.signal { width: 100%; height: auto; background: #fff; border: 1px solid var(--line);
  border-radius: 6px; }
svg.signal .axis { stroke: var(--muted); stroke-width: 1; }
svg.signal .gridline { stroke: var(--line); stroke-width: 1; }
svg.signal text { font-size: 11px; fill: var(--muted); }
svg.signal .curve { fill: none; stroke-width: 1.6; }
svg.signal .curve.act { stroke: var(--act); } svg.signal .curve.grad { stroke: var(--grad); }
svg.signal .mark.act { fill: var(--act); } svg.signal .mark.grad { fill: var(--grad); }
svg.signal .mark.norm { fill: var(--norm); }
svg.signal .mark.act.offscale { fill: #fff; stroke: var(--act); stroke-width: 1.5; }
svg.signal .mark.grad.offscale { fill: #fff; stroke: var(--grad); stroke-width: 1.5; }
svg.signal .residual { stroke: var(--ok); stroke-width: 1; stroke-dasharray: 4 3; }
svg.signal .normline { stroke: var(--norm); stroke-width: 1; stroke-dasharray: 1 3; }
svg.signal .finding-mark { fill: none; stroke: var(--bad); stroke-width: 2.2; }
.legend span { margin-right: 16px; white-space: nowrap; }
.legend i { display: inline-block; width: 18px; height: 3px; vertical-align: middle;
  margin-right: 5px; }
details { margin: 8px 0; } summary { cursor: pointer; color: var(--muted); }
"""


def _scoped(css: str, scope: str = ".biaslint-report") -> str:
    """Every rule of ``css`` limited to the report's element, so the report embedded in a
    notebook styles only itself (``:root`` and ``body`` become the element)."""
    import re

    def rule(match: "re.Match[str]") -> str:
        selectors = []
        for selector in match.group(1).split(","):
            selector = selector.strip()
            if selector in (":root", "body"):
                selectors.append(scope)
            elif selector == "*":
                selectors.append(f"{scope}, {scope} *")
            else:
                selectors.append(f"{scope} {selector}")
        return ", ".join(selectors) + " {"

    return re.sub(r"([^{}]+?)\s*\{", rule, css)


_CSS = _scoped(_PAGE_CSS)


def render(results: Sequence[TargetResult]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>biaslint report</title>", f"<style>body {{ margin: 0; }}\n{_CSS}</style>",
             "</head>", "<body>",
             body(results), "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def body(results: Sequence[TargetResult]) -> str:
    """The report without the page around it (Jupyter's ``_repr_html_`` embeds this, with the
    style)."""
    total = sum(len(r.findings) for r in results)
    lines = ['<div class="biaslint-report"><h1>biaslint report</h1>',
             f'<p class="muted">biaslint {escape(__version__)} &middot; {len(results)} '
             f'target{"s" if len(results) != 1 else ""} &middot; {total} '
             f'finding{"s" if total != 1 else ""}</p>']
    if len(results) > 1:
        lines.append(_overview(results))
    lines.extend(_target(r, i) for i, r in enumerate(results))
    lines.append("</div>")
    return "\n".join(lines)


def fragment(results: Sequence[TargetResult]) -> str:
    """``body`` with its style, for embedding in another page (a notebook cell)."""
    return f"<style>{_CSS}</style>\n{body(results)}"


def _status(result: TargetResult) -> str:
    if result.error:
        return "error"
    if result.incomplete:
        return "incomplete"
    return "findings" if result.findings else "clean"


def _overview(results: Sequence[TargetResult]) -> str:
    rows = ["<table class=\"overview\"><tr><th>target</th><th>status</th><th>findings</th>"
            "<th>coverage</th></tr>"]
    for i, r in enumerate(results):
        cov = f"{r.coverage.ratio:.0%}" if r.coverage else "-"
        status = _status(r)
        rows.append(f'<tr><td><a href="#target-{i}">{escape(r.target)}</a></td>'
                    f'<td><span class="status {status}">{status}</span></td>'
                    f"<td>{len(r.findings)}</td><td>{cov}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _target(result: TargetResult, index: int) -> str:
    status = _status(result)
    out = [f'<section class="target" id="target-{index}">',
           f'<h2>{escape(result.target)} <span class="status {status}">{status}</span></h2>']
    if result.error:
        out.append(f'<p class="error">{escape(result.error)}</p></section>')
        return "\n".join(out)
    out.append(_coverage(result))
    out.append("<h3>Signal propagation at init</h3>")
    out.append(_signal(result))
    out.append(f"<h3>Findings ({len(result.findings)})</h3>")
    if result.findings:
        out.extend(_finding(f) for f in result.findings)
    else:
        out.append('<p class="muted">No findings.</p>')
    if result.notes:
        out.append(f"<details><summary>Notes ({len(result.notes)})</summary><ul>")
        out.extend(f"<li>{escape(n)}</li>" for n in result.notes)
        out.append("</ul></details>")
    out.append("</section>")
    return "\n".join(out)


def _coverage(result: TargetResult) -> str:
    out = []
    cov = result.coverage
    if cov is not None:
        out.append(f"<p>Coverage: <b>{cov.traced}</b> of {cov.total} called layers inside a "
                   f"graph ({cov.ratio:.1%})"
                   + (f"; {len(cov.not_called)} not called on the example inputs"
                      if cov.not_called else "") + ".</p>")
    judged = [s for s in result.rules if s.total]
    if judged:
        cells = ", ".join(f"{escape(s.code)} {s.judged}/{s.total}" for s in judged)
        out.append(f'<p class="muted">Layers judged per rule: {cells}</p>')
    unjudged = list(result.incomplete) + [
        f"{s.code}: {layer or '<root>'}: {reason}" for s in result.rules
        for layer, reason in s.unjudged]
    if unjudged:
        out.append("<h3>Not judged</h3><ul class=\"unjudged\">")
        out.extend(f"<li>{escape(u)}</li>" for u in dict.fromkeys(unjudged))
        out.append("</ul>")
    return "\n".join(out)


def _finding(finding: Finding) -> str:
    loc = finding.location
    where = f"{loc.file}:{loc.line}" if loc else "(no source location)"
    out = [f'<article class="finding {escape(str(finding.severity))}" '
           f'data-code="{escape(finding.code)}">',
           f'<div class="head">{escape(finding.code)} {escape(finding.name)} '
           f'<span class="where">&middot; {escape(finding.module or "<root>")} '
           f'({escape(finding.module_type)}) &middot; {escape(where)}</span></div>',
           f"<div>{escape(finding.message)}</div>"]
    source = _source(loc)
    if source:
        out.append(source)
    if finding.fix is not None:
        fix = finding.fix
        safety = "safe fix" if fix.safe else "unsafe fix"
        code = f" <code>{escape(fix.code)}</code>" if fix.code else ""
        out.append(f'<div class="fix">Fix ({safety}): {escape(fix.title)}{code}</div>')
    out.append("</article>")
    return "\n".join(out)


def _source(loc: Any) -> str:
    if loc is None or not loc.file or not loc.line:
        return ""
    first, last = loc.line, max(loc.line, loc.end_line or loc.line)
    lines = []
    for number in range(max(1, first - 1), last + 2):
        text = line_of(loc.file, number)
        if not text and number > last:
            break
        text = text.rstrip("\n")
        row = f"{number:>5} | {escape(text)}"
        lines.append(f'<span class="hit">{row}</span>' if first <= number <= last else row)
    if not any(line_of(loc.file, n) for n in range(first, last + 1)):
        return ""
    return '<pre class="source">' + "\n".join(lines) + "</pre>"


# -- the plot ------------------------------------------------------------------------------------
# Below the plot: the layer names, slanted (a screenshot has no hover to tell the layers
# apart), as deep as the longest needs, then the axis caption.
_W, _PLOT_H = 960, 284
_LEFT, _RIGHT, _TOP = 96, 16, 16
_SLANT = 55  # degrees
_CHAR_W = 6.2  # px, 11 px sans-serif
_LABEL_CHARS = 24  # the longest layer name on the x axis (slanted, it fits the margin)
_MAX_LABELS = 64  # beyond this many points, every k-th is named (11 px text, ~13 px apart)


def _axis_labels(layers: Sequence[str]) -> list[str]:
    """A short name per point that still tells it from the others: the shortest dotted end of
    its name no other point's name ends with (``layer1.0.conv1`` next to ``conv1``), its inner
    parts cut to three letters and then its start dropped when too long; the number of the
    point is added to a label that is still the same as another's."""
    split = [name.split(".") for name in layers]
    labels = []
    for parts in split:
        k = 1
        while k < len(parts) and sum(1 for other in split if other[-k:] == parts[-k:]) > 1:
            k += 1
        while k < len(parts) and parts[-k].isdigit():  # "mlp.0", not a bare "0"
            k += 1
        tail = parts[-k:]
        text = ".".join(tail)
        if len(text) > _LABEL_CHARS and len(tail) > 2:
            text = ".".join([tail[0], *(part[:3] for part in tail[1:-1]), tail[-1]])
        if len(text) > _LABEL_CHARS:  # the end keeps the layer's own name and its block index
            text = "…" + text[-(_LABEL_CHARS - 1):]
        labels.append(text)
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    return [f"{label} #{i}" if seen[label] > 1 else label for i, label in enumerate(labels, 1)]


def _signal(result: TargetResult) -> str:
    signal = result.signal
    if signal is None or not signal.points:
        why = next((n for n in result.notes if n.startswith("signal propagation")),
                   "signal propagation not measured")
        return f'<p class="muted">{escape(why)}</p>'
    points = signal.points
    marked: dict[str, list[Finding]] = {}
    for f in result.findings:
        if f.code in MARKED_RULES:
            marked.setdefault(f.module, []).append(f)
    plot = _Plot.of(points)
    svg = [f'<svg class="signal" viewBox="0 0 {_W} {plot.height}" '
           f'role="img" aria-label="activation and gradient RMS per layer">']
    svg += _gridlines(plot)
    svg += _boundaries(plot, points)
    svg += _axes(plot, points)
    svg += _curves(plot, points, marked)
    svg.append("</svg>")
    return "\n".join(svg) + "\n" + _legend() + "\n" + "\n".join(_values_table(signal))


class _Plot:
    """The plot's geometry: where a point's index and a value (log scale) are drawn, and which
    points are named on the x axis."""

    def __init__(self, points: Sequence[Any], low: float, high: float) -> None:
        self.count = len(points)
        self.low, self.high = low, high
        self.span_x = max(1, self.count - 1)
        self.step = max(1, math.ceil(self.count / _MAX_LABELS))
        self.names = _axis_labels([p.layer or "<root>" for p in points])
        longest = max(len(self.names[i]) for i in range(0, self.count, self.step))
        self.height = _TOP + _PLOT_H + 12 + math.ceil(longest * _CHAR_W *
                                                      math.sin(math.radians(_SLANT))) + 24
        self.plot_w, self.plot_h = _W - _LEFT - _RIGHT, _PLOT_H

    @classmethod
    def of(cls, points: Sequence[Any]) -> _Plot:
        """The plot of ``points``, its log scale whole decades around every positive value."""
        values = [v for p in points for v in (p.activation_rms, p.gradient_rms)
                  if v is not None and math.isfinite(v) and v > 0]
        low = 10 ** math.floor(math.log10(min(values))) if values else 1e-3
        high = 10 ** math.ceil(math.log10(max(values))) if values else 1e3
        if high <= low:
            high = low * 10
        return cls(points, low, high)

    def x_of(self, i: int) -> float:
        return _LEFT + self.plot_w * (i / self.span_x if self.count > 1 else 0.5)

    def y_of(self, v: float | None) -> tuple[float, bool]:
        """The y of a value, and whether it is off the scale (zero, NaN, Inf: at an edge)."""
        if v is None or not math.isfinite(v) or v <= 0:
            edge = _TOP if v is not None and math.isinf(v) else _TOP + self.plot_h
            return edge, True
        frac = (math.log10(v) - math.log10(self.low)) / \
            (math.log10(self.high) - math.log10(self.low))
        return _TOP + self.plot_h * (1 - frac), False


def _gridlines(plot: _Plot) -> list[str]:
    """A line and a label per decade (every other one on a scale of more than 12)."""
    svg = []
    decade = math.log10(plot.low)
    while decade <= math.log10(plot.high) + 1e-9:
        y, _ = plot.y_of(10 ** decade)
        svg.append(f'<line class="gridline" x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" '
                   f'y2="{y:.1f}"/><text x="{_LEFT - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">1e{int(round(decade))}</text>')
        decade += 1 if math.log10(plot.high) - math.log10(plot.low) <= 12 else 2
    return svg


def _boundaries(plot: _Plot, points: Sequence[Any]) -> list[str]:
    """A dashed line after each layer a residual sum follows, a dotted one at each norm."""
    svg = []
    for i, p in enumerate(points):
        x = plot.x_of(i)
        if p.residual_after:
            xr = x + (plot.plot_w / plot.span_x / 2 if len(points) > 1 else 0)
            svg.append(f'<line class="residual" x1="{xr:.1f}" y1="{_TOP}" x2="{xr:.1f}" '
                       f'y2="{_TOP + plot.plot_h}"><title>residual sum after '
                       f'{escape(p.layer)}</title></line>')
        if p.norm:
            svg.append(f'<line class="normline" x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" '
                       f'y2="{_TOP + plot.plot_h}"/>')
    return svg


def _axes(plot: _Plot, points: Sequence[Any]) -> list[str]:
    """The two axes, the named layers' ticks (slanted labels) and the x axis caption."""
    plot_h = plot.plot_h
    svg = [f'<line class="axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_W - _RIGHT}" '
           f'y2="{_TOP + plot_h}"/><line class="axis" x1="{_LEFT}" y1="{_TOP}" '
           f'x2="{_LEFT}" y2="{_TOP + plot_h}"/>']
    for i in range(0, len(points), plot.step):
        x = plot.x_of(i)
        y = _TOP + plot_h + 12
        svg.append(f'<line class="axis" x1="{x:.1f}" y1="{_TOP + plot_h}" x2="{x:.1f}" '
                   f'y2="{_TOP + plot_h + 4}"/><text class="xtick" '
                   f'data-layer="{escape(points[i].layer or "<root>")}" x="{x:.1f}" y="{y:.1f}" '
                   f'text-anchor="end" transform="rotate(-{_SLANT} {x:.1f} {y:.1f})">'
                   f'{escape(plot.names[i])}</text>')
    every = "" if plot.step == 1 else f", one in {plot.step} named"
    svg.append(f'<text x="{_LEFT + plot.plot_w / 2:.0f}" y="{plot.height - 6}" '
               f'text-anchor="middle">layers in execution order ({len(points)}{every}; hover '
               'a point for its value)</text>')
    return svg


def _curves(plot: _Plot, points: Sequence[Any], marked: dict[str, list[Finding]]) -> list[str]:
    """The activation and gradient curves, a point per layer with its value, and a ring on
    the activation point of each layer with a marked finding."""
    svg = []
    for kind, attr in (("act", "activation_rms"), ("grad", "gradient_rms")):
        coords = [(plot.x_of(i), *plot.y_of(getattr(p, attr))) for i, p in enumerate(points)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, off in coords if not off)
        if path:
            svg.append(f'<polyline class="curve {kind}" points="{path}"/>')
        for (x, y, off), p in zip(coords, points):
            value = getattr(p, attr)
            if kind == "grad" and value is None:
                continue
            shown = "no gradient" if value is None else f"{value:.4g}"
            label = "activation RMS" if kind == "act" else "gradient RMS"
            classes = f"mark {kind}" + (" norm" if p.norm and kind == "act" else "") + \
                (" offscale" if off else "")
            tip = f"{p.layer or '<root>'} ({p.module_type}): {label} {shown}"
            svg.append(f'<circle class="{classes}" data-layer="{escape(p.layer)}" '
                       f'cx="{x:.1f}" cy="{y:.1f}" r="{3.2 if kind == "act" else 2.4}">'
                       f"<title>{escape(tip)}</title></circle>")
            if kind == "act" and p.layer in marked:
                text = "; ".join(f"{f.code}: {f.message}" for f in marked[p.layer])
                codes = " ".join(sorted({f.code for f in marked[p.layer]}))
                svg.append(f'<circle class="finding-mark" data-layer="{escape(p.layer)}" '
                           f'data-code="{escape(codes)}" cx="{x:.1f}" cy="{y:.1f}" r="7">'
                           f"<title>{escape(text)}</title></circle>")
    return svg


def _legend() -> str:
    return ('<div class="legend muted"><span><i style="background:var(--act)"></i>activation '
            'RMS at the layer\'s output</span><span><i style="background:var(--grad)"></i>'
            'gradient RMS reaching it</span><span><i style="background:var(--ok)"></i>'
            'residual sum (dashed)</span><span><i style="background:var(--norm)"></i>'
            'normalization layer (dotted)</span><span><i style="background:var(--bad)"></i>'
            f'{"/".join(MARKED_RULES)} finding (ring)</span><span><i style="height:8px;'
            'width:8px;border-radius:4px;border:1.5px solid var(--grad);background:#fff">'
            '</i>hollow, in its curve\'s colour: zero, or not finite: off the log scale, '
            'drawn at its edge</span></div>')


def _values_table(signal: Any) -> list[str]:
    """The plotted values as a table (folded), the backward's loss, the layers with no point."""
    table = ["<details><summary>The values</summary><table class=\"signal-values\"><tr>"
             "<th>#</th><th>layer</th><th>type</th><th>activation RMS</th><th>gradient RMS</th>"
             "<th>weight gradient RMS</th></tr>"]
    for i, p in enumerate(signal.points, 1):
        table.append(f"<tr><td>{i}</td><td>{escape(p.layer or '<root>')}</td>"
                     f"<td>{escape(p.module_type)}</td><td>{_num(p.activation_rms)}</td>"
                     f"<td>{_num(p.gradient_rms)}</td><td>{_num(p.weight_gradient_rms)}</td>"
                     "</tr>")
    table.append(f'</table><p class="muted">Backward: {escape(signal.loss)}.</p></details>')
    if signal.unmeasured:
        table.append(f'<p class="muted">No point of their own (the forward used their '
                     f'parameters without calling them as modules): '
                     f'{escape(", ".join(n or "<root>" for n in signal.unmeasured))}</p>')
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
