// Simple SVG charts: horizontal bars and grouped columns, labelled, scaling to their box.

export interface Bar {
  label: string;
  value: number;
  /** a second value drawn inside the first (e.g. weighted within total) */
  inner?: number;
  text?: string;
}

export function HBars({ bars, title }: { bars: Bar[]; title: string }) {
  const max = Math.max(1, ...bars.map((b) => b.value));
  const row = 30;
  const h = bars.length * row + 4;
  return (
    <svg class="chart hbars" viewBox={`0 0 400 ${h}`} role="img" aria-label={title} preserveAspectRatio="xMinYMin meet">
      <title>{title}</title>
      {bars.map((b, i) => {
        const w = (b.value / max) * 250;
        const y = i * row + 4;
        return (
          <g key={b.label} transform={`translate(0 ${y})`}>
            <text x="0" y="16" class="label">{b.label.length > 18 ? `${b.label.slice(0, 17)}…` : b.label}</text>
            <rect x="120" y="2" width={Math.max(w, 1)} height="20" rx="3" class="bar" />
            {b.inner !== undefined && <rect x="120" y="2" width={Math.max((b.inner / max) * 250, 0)} height="20" rx="3" class="bar inner" />}
            <text x={Math.min(124 + w, 396)} y="16" class="value" text-anchor={w > 200 ? "end" : "start"} dx={w > 200 ? -8 : 0}>
              {b.text ?? String(b.value)}
            </text>
          </g>
        );
      })}
    </svg>
  );
}

export interface Series {
  name: string;
  values: number[];
}

export function Columns({ labels, series, title, format }: {
  labels: string[]; series: Series[]; title: string; format: (n: number) => string;
}) {
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const w = 400;
  const h = 200;
  const left = 8;
  const bottom = 36;
  const group = (w - left) / Math.max(1, labels.length);
  const bw = Math.max(2, (group - 6) / Math.max(1, series.length));
  return (
    <figure class="chart-figure">
      <svg class="chart columns" viewBox={`0 0 ${w} ${h}`} role="img" aria-label={title}>
        <title>{title}</title>
        <line x1={left} x2={w} y1={h - bottom} y2={h - bottom} class="axis" />
        <text x={left} y="12" class="value">{format(max)}</text>
        {labels.map((label, i) => (
          <g key={label} transform={`translate(${left + i * group + 3} 0)`}>
            {series.map((s, j) => {
              const bh = ((s.values[i] ?? 0) / max) * (h - bottom - 20);
              return (
                <rect key={s.name} x={j * bw} y={h - bottom - bh} width={bw - 1} height={bh} class={`bar s${j}`}>
                  <title>{`${s.name} ${label}: ${format(s.values[i] ?? 0)}`}</title>
                </rect>
              );
            })}
            <text x={group / 2 - 3} y={h - bottom + 14} class="label small" text-anchor="middle">{label}</text>
          </g>
        ))}
      </svg>
      <figcaption class="legend">
        {series.map((s, j) => (
          <span key={s.name}><i class={`swatch s${j}`} />{s.name}</span>
        ))}
      </figcaption>
    </figure>
  );
}
