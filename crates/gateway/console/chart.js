// The activity chart: calls per function from the list's counters, latency from /metrics
// (or from the calls made on this page when the gateway has no /metrics).
import { $, st, el, api, fmtMs } from './core.js';

const WINDOW_MS = 5 * 60 * 1000;
const BUCKET_MS = 15 * 1000;
const BUCKETS = WINDOW_MS / BUCKET_MS;
const COLORS = ['#4f46e5', '#0ea5e9', '#16a34a', '#f59e0b', '#db2777', '#7c3aed', '#0d9488',
  '#dc2626', '#65a30d', '#ea580c'];

function colorOf(name) {
  if (!st.colors.has(name)) st.colors.set(name, COLORS[st.colors.size % COLORS.length]);
  return st.colors.get(name);
}

// Keep the invocation counters of this refresh, for the calls chart.
export function sample(list) {
  const now = Date.now();
  const names = new Set();
  for (const f of list) {
    names.add(f.name);
    const s = st.samples.get(f.name) || [];
    s.push({ t: now, count: f.invocationCount || 0 });
    while (s.length > 2 && s[1].t < now - WINDOW_MS) s.shift();
    st.samples.set(f.name, s);
  }
  for (const n of st.samples.keys()) if (!names.has(n)) st.samples.delete(n);
  st.latency = st.latency.filter((x) => x.t >= now - WINDOW_MS);
}

// Prometheus text: sum gateway_functions_seconds_{sum,count} per function of the shown
// namespace.
function parseMetrics(text) {
  const out = new Map();
  const suffix = '.' + st.ns;
  const re = /^gateway_functions_seconds_(sum|count)\{([^}]*)\}\s+([0-9.eE+-]+|NaN)/;
  for (const line of text.split('\n')) {
    const m = re.exec(line);
    if (!m) continue;
    const fn = /function_name="([^"]*)"/.exec(m[2]);
    // The label is NAME.NAMESPACE: only the shown namespace's functions are charted.
    if (!fn || !fn[1].endsWith(suffix)) continue;
    const name = fn[1].slice(0, -suffix.length);
    const v = parseFloat(m[3]);
    if (!Number.isFinite(v)) continue;
    const e = out.get(name) || { sum: 0, count: 0 };
    e[m[1]] += v;
    out.set(name, e);
  }
  return out;
}

// Latency per function from the gateway's /metrics, when it has them; a gateway without the
// route is asked again after a minute.
export async function sampleMetrics() {
  const m = st.metrics;
  const now = Date.now();
  if (m.missing && now - m.lastTry < 60000) return;
  m.lastTry = now;
  try {
    const r = await api('GET', '/metrics');
    m.missing = !r.ok;
    if (!r.ok) {
      m.available = false;
      return;
    }
    const text = await r.text();
    m.available = text.includes('gateway_functions_seconds');
    const cur = parseMetrics(text);
    if (m.prev) {
      for (const [name, c] of cur) {
        const p = m.prev.get(name) || { sum: 0, count: 0 };
        const n = c.count - p.count;
        if (n > 0 && c.sum >= p.sum) st.latency.push({ t: now, name, ms: ((c.sum - p.sum) / n) * 1000, n });
      }
    }
    m.prev = cur;
  } catch (e) {
    if (e.status !== 401) {
      m.available = false;
      m.missing = true;
    }
  }
}

function bucketOf(t, now) {
  const b = BUCKETS - 1 - Math.floor((now - t) / BUCKET_MS);
  return b >= 0 && b < BUCKETS ? b : -1;
}

function series() {
  const now = Date.now();
  const calls = new Map();
  const lat = new Map();
  for (const [name, s] of st.samples) {
    const v = new Array(BUCKETS).fill(0);
    let any = false;
    for (let i = 1; i < s.length; i++) {
      const d = s[i].count - s[i - 1].count;
      const b = bucketOf(s[i].t, now);
      if (d > 0 && b >= 0) {
        v[b] += d;
        any = true;
      }
    }
    // Before the page's first sample nothing is known: leave those buckets empty.
    const first = bucketOf(s[0].t, now);
    for (let i = 0; i < first; i++) v[i] = null;
    if (any) calls.set(name, v);
  }
  const acc = new Map();
  for (const x of st.latency) {
    const b = bucketOf(x.t, now);
    if (b < 0) continue;
    const a = acc.get(x.name) || Array.from({ length: BUCKETS }, () => ({ sum: 0, n: 0 }));
    a[b].sum += x.ms * x.n;
    a[b].n += x.n;
    acc.set(x.name, a);
  }
  for (const [name, a] of acc) lat.set(name, a.map((c) => (c.n ? c.sum / c.n : null)));
  return { calls, lat };
}

function svg(tag, attrs) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 4, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawChart(node, data, unit) {
  node.replaceChildren();
  const W = 560, H = 150, L = 44, R = 8, T = 8, B = 22;
  const w = W - L - R, h = H - T - B;
  let max = 0;
  for (const v of data.values()) for (const x of v) if (x != null && x > max) max = x;
  max = niceMax(max);
  // Counts get whole-number gridlines.
  if (!unit) max = Math.max(4, Math.ceil(max / 4) * 4);
  for (let i = 0; i <= 4; i++) {
    const y = T + h - (h * i) / 4;
    node.append(svg('line', { x1: L, x2: L + w, y1: y, y2: y, class: 'grid' }));
    const label = svg('text', { x: L - 6, y: y + 3.5, 'text-anchor': 'end', class: 'axis-label' });
    const val = (max * i) / 4;
    label.textContent = String(Number(val.toPrecision(3))) + unit;
    node.append(label);
  }
  for (let m = 5; m >= 0; m--) {
    const x = L + w - (w * m * 60000) / WINDOW_MS;
    const label = svg('text', { x, y: H - 6, 'text-anchor': m === 0 ? 'end' : 'middle', class: 'axis-label' });
    label.textContent = m === 0 ? 'now' : `−${m} min`;
    node.append(label);
  }
  const xOf = (i) => L + (w * (i + 0.5)) / BUCKETS;
  const yOf = (v) => T + h - (h * v) / max;
  for (const [name, v] of data) {
    const color = colorOf(name);
    let d = '';
    let pen = false;
    v.forEach((x, i) => {
      if (x == null) {
        pen = false;
        return;
      }
      d += (pen ? 'L' : 'M') + xOf(i).toFixed(1) + ' ' + yOf(x).toFixed(1) + ' ';
      pen = true;
    });
    if (d) {
      node.append(svg('path', {
        d, fill: 'none', stroke: color, 'stroke-width': 2, 'stroke-linejoin': 'round',
        'stroke-linecap': 'round',
      }));
    }
    v.forEach((x, i) => {
      if (x != null && x > 0) {
        const c = svg('circle', { cx: xOf(i), cy: yOf(x), r: 3, fill: color });
        const tip = svg('title');
        tip.textContent = `${name}: ${unit ? fmtMs(x) : x}`;
        c.append(tip);
        node.append(c);
      }
    });
  }
}

export function renderChart() {
  const { calls, lat } = series();
  const any = calls.size > 0 || lat.size > 0;
  $('chart-empty').hidden = any;
  $('charts').hidden = !any;
  if (!any) return;
  // A function with calls gets a full line (zeros included) so bursts read as bursts.
  drawChart($('chart-calls'), calls, '');
  drawChart($('chart-latency'), lat, ' ms');
  const legend = $('chart-legend');
  legend.replaceChildren();
  for (const name of new Set([...calls.keys(), ...lat.keys()])) {
    const swatch = el('i');
    swatch.style.background = colorOf(name);
    legend.append(el('span', {}, swatch, name));
  }
  $('chart-source').textContent = st.metrics.available
    ? 'Latency from the gateway’s /metrics (gateway_functions_seconds).'
    : 'Latency from the calls made on this page; calls from the function list’s counters.';
}
