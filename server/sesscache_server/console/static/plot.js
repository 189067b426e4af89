// A small live line plot on a canvas: a few series over the last points.

export class Plot {
  /** series: [{name, color}]; capacity: points kept (one a second: 5 minutes). */
  constructor(canvas, series, capacity = 300) {
    this.canvas = canvas;
    this.series = series;
    this.capacity = capacity;
    this.points = []; // [{t, values: [..]}]
  }

  push(t, values) {
    this.points.push({ t, values });
    if (this.points.length > this.capacity) this.points.shift();
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 200;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const left = 48;
    const bottom = height - 20;
    const top = 8;
    const right = width - 8;
    let max = 1;
    for (const p of this.points) for (const v of p.values) max = Math.max(max, v);
    const step = niceStep(max / 4);
    max = step * 4;
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#6b7280';
    g.strokeStyle = '#e5e7eb';
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= 4; i += 1) {
      const y = bottom - ((bottom - top) * i) / 4;
      g.beginPath();
      g.moveTo(left, Math.round(y) + 0.5);
      g.lineTo(right, Math.round(y) + 0.5);
      g.stroke();
      g.fillText(short((max * i) / 4), left - 6, y);
    }
    const now = this.points.length ? this.points[this.points.length - 1].t : Date.now() / 1000;
    // The last 30 seconds at first, growing with the data up to the capacity.
    const oldest = this.points.length ? this.points[0].t : now;
    const span = Math.min(this.capacity, Math.max(30, Math.ceil((now - oldest) / 30) * 30));
    const x = (t) => right - ((now - t) / span) * (right - left);
    g.textAlign = 'center';
    g.textBaseline = 'top';
    const tick = span <= 30 ? 5 : span <= 90 ? 15 : 60;
    for (let k = 0; k * tick <= span; k += 1) {
      const xx = x(now - k * tick);
      if (xx < left - 1) break;
      const label = k === 0 ? 'now' : tick === 60 ? `-${k}m` : `-${k * tick}s`;
      g.fillText(label, Math.max(left + 12, Math.min(right - 12, xx)), bottom + 4);
    }
    this.series.forEach((s, index) => {
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      let started = false;
      for (const p of this.points) {
        const xx = x(p.t);
        if (xx < left) continue;
        const yy = bottom - (p.values[index] / max) * (bottom - top);
        if (started) g.lineTo(xx, yy);
        else { g.moveTo(xx, yy); started = true; }
      }
      g.stroke();
    });
  }
}

function niceStep(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function short(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return value % 1 ? value.toFixed(1) : String(value);
}
