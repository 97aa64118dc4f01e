"""Safe HTML building blocks: escaping, JSON for ``<script>`` blocks, the page shell, CSS and JS.

Every string that comes from the dataset, a model or a config goes through :func:`esc` (text
and attribute values) or :func:`script_json` (data embedded in a ``<script>``); nothing is
ever assigned to ``innerHTML`` by the page scripts, which build the table with ``textContent``.
"""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any

_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def esc(value: Any) -> str:
    """``value`` as HTML text or a quoted attribute value (``& < > " '`` escaped)."""
    return html.escape(str(value), quote=True)


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def script_json(obj: Any) -> str:
    """``obj`` as JSON that is safe inside ``<script>``: no ``</script>``, ``<!--``, ``&`` or JS line
    terminators can appear, so the data cannot end the script block or break the parser."""
    text = json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return "".join(_SCRIPT_UNSAFE.get(c, c) for c in text)


def json_block(element_id: str, obj: Any) -> str:
    """A ``<script type="application/json">`` data block (read with ``JSON.parse``)."""
    return f'<script type="application/json" id="{esc(element_id)}">{script_json(obj)}</script>'


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for display: fixed digits, scientific below 1e-3, an em dash for None."""
    if value is None:
        return "—"
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def show_whitespace(text: str) -> str:
    """Token text with newlines and tabs made visible (spaces are kept by ``white-space: pre``)."""
    return (text.replace("\r", "␍").replace("\n", "↵").replace("\t", "→")
            .replace("\u2028", "␤").replace("\u2029", "¶"))


def page(title: str, body: str, plotly_src: str | None, script: str = "") -> str:
    """A complete HTML document; ``plotly_src`` is the relative path of plotly.min.js (or None)."""
    plotly = f'<script src="{esc(plotly_src)}"></script>' if plotly_src else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style>{plotly}</head>"
            f'<body><div class="wrap">{body}</div>{script}</body></html>\n')


_VARS = "--fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg2:#f6f8fa; --accent:#0969da; --bad:#cf222e;"
_FONT = 'font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;'
_PAGE_CSS = f"""
:root {{ {_VARS} }}
* {{ box-sizing: border-box; }}
body {{ margin:0; color:var(--fg); background:#fff; {_FONT} }}
"""
_COMPONENT_CSS = """
.wrap { max-width: 1280px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 24px; margin: 4px 0 2px; } h2 { font-size: 18px; margin: 28px 0 8px;
  border-bottom: 1px solid var(--line); padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.muted, .note { color: var(--muted); } .note { font-size: 13px; margin: 4px 0 10px; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: var(--bg2); border: 1px solid var(--line); border-radius: 6px; padding: 10px;
  overflow: auto; max-height: 420px; white-space: pre-wrap; word-break: break-word; }
details > summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg2); font-weight: 600; }
#features th { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 120px;
  background: #fff; }
.card .k { color: var(--muted); font-size: 12px; } .card .v { font-size: 17px; font-weight: 600; }
.status { display: inline-block; padding: 0 6px; border-radius: 10px; font-size: 12px;
  background: #ffebe9; color: var(--bad); border: 1px solid #ffcecb; white-space: nowrap; }
.status.ok { background: #dafbe1; color: #1a7f37; border-color: #aceebb; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 18px; }
.plot { width: 100%; min-height: 340px; }
.example { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px;
  line-height: 1.9; padding: 4px 6px; border-bottom: 1px dashed var(--line); word-wrap: break-word; }
.example .peak { color: var(--muted); font-size: 11px; margin-right: 8px; }
.tok { white-space: pre; border-radius: 3px; padding: 1px 0; }
.tok.pk { outline: 1px solid #bc4c00; }
.chips .tok { display: inline-block; border: 1px solid var(--line); padding: 0 5px; margin: 2px 3px 2px 0;
  background: var(--bg2); }
.chips .tok small { color: var(--muted); margin-left: 4px; }
#filter { width: 340px; max-width: 100%; padding: 6px 10px; border: 1px solid var(--line); border-radius: 6px;
  font-size: 14px; }
#features th { cursor: pointer; user-select: none; position: sticky; top: 0; }
#features th.asc::after { content: " ▲"; } #features th.desc::after { content: " ▼"; }
#features td.expl { max-width: 460px; }
#features .others { color: var(--muted); font-size: 12px; display: block; }
.tablewrap { max-height: 80vh; overflow: auto; border: 1px solid var(--line); border-radius: 6px; }
.tablewrap table { margin: 0; }
nav { font-size: 13px; margin-bottom: 8px; }
"""
CSS = _PAGE_CSS + _COMPONENT_CSS


def scoped_css(root_class: str) -> str:
    """The component styles limited to elements inside ``.root_class`` (for a notebook fragment)."""
    def prefix(m: re.Match) -> str:
        return ", ".join(f".{root_class} {sel.strip()}" for sel in m.group(1).split(",")) + " {"

    scoped = re.sub(r"([^{}]+)\{", prefix, _COMPONENT_CSS)
    return f".{root_class} {{ {_VARS} color:var(--fg); {_FONT} }}" + scoped

TABLE_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("table-data").textContent);
  var cols = data.columns, rows = data.rows;
  var table = document.getElementById("features");
  var tbody = table.querySelector("tbody");
  var filter = document.getElementById("filter"), count = document.getElementById("count");
  var sortCol = 0, sortDir = 1;

  function cellText(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "object") return v.v === null ? v.s : v.v.toFixed(3);
    if (typeof v === "number") return fmt(v);
    return String(v);
  }
  function fmt(x) {
    if (Number.isInteger(x)) return String(x);
    if (x !== 0 && Math.abs(x) < 1e-3) return x.toExponential(2);
    return x.toFixed(3);
  }
  function sortKey(v) {
    if (v === null || v === undefined) return null;
    if (typeof v === "object") return v.v === null ? null : v.v;
    return v;
  }
  function makeCell(row, col) {
    var td = document.createElement("td"), v = row[col.key];
    if (col.kind === "num" || col.kind === "score") td.className = "num";
    if (col.kind === "id" && row.page) {
      var a = document.createElement("a"); a.href = row.page; a.textContent = String(v); td.appendChild(a);
    } else if (col.kind === "expl") {
      td.className = "expl";
      var e = row.expl;
      if (e) {
        var main = document.createElement("span");
        main.textContent = e.text === null ? "" : e.text;
        if (e.status !== "ok") main.appendChild(badge(e.status));
        td.appendChild(main);
        var by = document.createElement("span"); by.className = "others";
        by.textContent = "by " + e.explainer + (e.model !== "none" ? " (" + e.model + ")" : "");
        td.appendChild(by);
      }
      row.others.forEach(function (o) {
        var s = document.createElement("span"); s.className = "others";
        s.textContent = o.explainer + ": ";
        s.appendChild(o.status === "ok" ? document.createTextNode("ok") : badge(o.status));
        td.appendChild(s);
      });
    } else if (col.kind === "score" && v && v.v === null) {
      td.appendChild(badge(v.s));
    } else {
      td.textContent = cellText(v);
    }
    return td;
  }
  function badge(status) {
    var b = document.createElement("span"); b.className = "status"; b.textContent = status; return b;
  }
  var trs = rows.map(function (row) {
    var tr = document.createElement("tr");
    cols.forEach(function (c) { tr.appendChild(makeCell(row, c)); });
    row._tr = tr;
    return tr;
  });
  function render() {
    var q = filter.value.trim().toLowerCase(), shown = 0, key = cols[sortCol].key;
    var order = rows.slice().sort(function (a, b) {
      var x = sortKey(a[key]), y = sortKey(b[key]);
      if (key === "expl") { x = a.expl ? a.expl.text : null; y = b.expl ? b.expl.text : null; }
      if (x === y) return a.id - b.id;
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : 1) * sortDir;
    });
    var frag = document.createDocumentFragment();
    order.forEach(function (row) {
      var visible = !q || row.search.indexOf(q) !== -1;
      row._tr.style.display = visible ? "" : "none";
      shown += visible;
      frag.appendChild(row._tr);
    });
    tbody.appendChild(frag);
    count.textContent = "showing " + shown + " of " + rows.length + " features";
  }
  var ths = cols.map(function (c, i) {
    var th = document.createElement("th"); th.textContent = c.label; th.title = "click to sort";
    if (c.kind === "num" || c.kind === "score") th.className = "num";
    th.addEventListener("click", function () {
      sortDir = sortCol === i ? -sortDir : 1; sortCol = i;
      ths.forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(sortDir === 1 ? "asc" : "desc");
      render();
    });
    return th;
  });
  var headRow = document.createElement("tr");
  ths.forEach(function (th) { headRow.appendChild(th); });
  table.querySelector("thead").appendChild(headRow);
  trs.forEach(function (tr) { tbody.appendChild(tr); });
  filter.addEventListener("input", render);
  render();
})();
"""

PLOTS_JS = r"""
(function () {
  "use strict";
  var figs = JSON.parse(document.getElementById("figures").textContent);
  Object.keys(figs).forEach(function (id) {
    var el = document.getElementById(id);
    if (el && window.Plotly) Plotly.newPlot(el, figs[id].data, figs[id].layout,
      {responsive: true, displaylogo: false, showLink: false, showSendToCloud: false,
       showEditInChartStudio: false});
  });
})();
"""


def scripts(figures: dict[str, dict], table: dict | None = None) -> str:
    """The data blocks and page scripts: plotly figures by div id, and optionally the feature table."""
    out = json_block("figures", figures) + f"<script>{PLOTS_JS}</script>"
    if table is not None:
        out += json_block("table-data", table) + f"<script>{TABLE_JS}</script>"
    return out
