// Hand-written SVG charts: line charts with several series (runs overlaid) and a heatmap.
"use strict";

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
const SVGNS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) out.push(+t.toPrecision(12));
  return out;
}

function fmtTick(v) {
  if (v === 0) return "0";
  const a = Math.abs(v), short = +v.toPrecision(5);   // enough digits to tell close ticks apart
  return (a >= 1e4 || a < 1e-3) ? short.toExponential() : short + "";
}

// series: [{name, color, points: [[x, y], ...], markers: bool, dashed: bool}]
function lineChart(container, series, opts) {
  opts = opts || {};
  const W = opts.width || 640, H = opts.height || 260;
  const m = {l: 56, r: 12, t: 12, b: 36};
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                            "aria-label": opts.title || "chart"});
  const pts = series.flatMap(s => s.points).filter(p => isFinite(p[1]));
  if (!pts.length) {
    svg.appendChild(svgEl("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"},
                          opts.empty || "no data yet"));
    container.replaceChildren(svg);
    return svg;
  }
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  let y0 = Math.min(...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0) * 0.05 || Math.abs(y0) * 0.05 || 1;
  y0 -= pad; y1 += pad;
  const X = x => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
  const Y = y => H - m.b - (y - y0) / (y1 - y0) * (H - m.t - m.b);
  const axes = svgEl("g", {class: "axes"});
  for (const t of niceTicks(y0, y1, 5)) {
    axes.appendChild(svgEl("line", {x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), class: "grid"}));
    axes.appendChild(svgEl("text", {x: m.l - 6, y: Y(t) + 4, "text-anchor": "end"}, fmtTick(t)));
  }
  for (const t of niceTicks(x0, x1, 6)) {
    axes.appendChild(svgEl("line", {x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4, class: "tick"}));
    axes.appendChild(svgEl("text", {x: X(t), y: H - m.b + 16, "text-anchor": "middle"}, fmtTick(t)));
  }
  axes.appendChild(svgEl("line", {x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis"}));
  axes.appendChild(svgEl("line", {x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: "axis"}));
  if (opts.xlabel) axes.appendChild(svgEl("text", {x: (W + m.l) / 2, y: H - 4, "text-anchor": "middle",
                                                   class: "label"}, opts.xlabel));
  if (opts.ylabel) axes.appendChild(svgEl("text", {x: 12, y: (H - m.b) / 2, class: "label",
    transform: `rotate(-90 12 ${(H - m.b) / 2})`, "text-anchor": "middle"}, opts.ylabel));
  svg.appendChild(axes);
  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    const good = s.points.filter(p => isFinite(p[1]));
    if (!good.length) return;
    const d = good.map((p, k) => (k ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join(" ");
    const g = svgEl("g", {class: "series", "data-name": s.name, "data-points": good.length});
    g.appendChild(svgEl("path", {d, stroke: color, fill: "none", "stroke-width": s.markers ? 1.5 : 1.8,
                                 "stroke-dasharray": s.dashed ? "5 3" : "none"}));
    if (s.markers || good.length === 1) for (const p of good) g.appendChild(svgEl("circle", {cx: X(p[0]), cy: Y(p[1]), r: 3, fill: color}));
    svg.appendChild(g);
  });
  const legend = svgEl("g", {class: "legend"});
  series.forEach((s, i) => {
    const y = m.t + 6 + i * 15, x = W - m.r - 170;
    legend.appendChild(svgEl("rect", {x, y: y - 5, width: 14, height: 3,
                                      fill: s.color || PALETTE[i % PALETTE.length]}));
    legend.appendChild(svgEl("text", {x: x + 20, y: y}, s.name));
  });
  svg.appendChild(legend);
  container.replaceChildren(svg);
  return svg;
}

// grid: rows i, cols j, values in [0, 1] (subspace similarity)
function heatmap(container, grid, title) {
  const n = grid.length, k = grid[0].length, cell = Math.max(8, Math.min(28, Math.floor(260 / Math.max(n, k))));
  const W = 40 + k * cell + 60, H = 24 + n * cell + 30;
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, class: "heatmap", width: W, height: H});
  svg.appendChild(svgEl("text", {x: 40, y: 14, class: "label"}, title));
  const color = v => `hsl(${240 - 180 * v}, 70%, ${25 + 45 * v}%)`;
  grid.forEach((row, i) => row.forEach((v, j) => {
    const r = svgEl("rect", {x: 40 + j * cell, y: 20 + i * cell, width: cell, height: cell, fill: color(v)});
    r.appendChild(svgEl("title", {}, `phi(${i + 1}, ${j + 1}) = ${v.toFixed(3)}`));
    svg.appendChild(r);
  }));
  svg.appendChild(svgEl("text", {x: 40, y: H - 4, class: "label"}, "j (other) →"));
  svg.appendChild(svgEl("text", {x: 2, y: 30, class: "label"}, "i ↓"));
  const bar = svgEl("g", {});
  for (let s = 0; s <= 10; s++) bar.appendChild(svgEl("rect", {x: W - 40, y: 20 + (10 - s) * (n * cell / 11),
    width: 12, height: n * cell / 11 + 1, fill: color(s / 10)}));
  bar.appendChild(svgEl("text", {x: W - 24, y: 28, class: "label"}, "1"));
  bar.appendChild(svgEl("text", {x: W - 24, y: 20 + n * cell, class: "label"}, "0"));
  svg.appendChild(bar);
  container.appendChild(svg);
  return svg;
}
