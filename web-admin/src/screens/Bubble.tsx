// One bubble: its health over time (live), members, categories (with who-sees-whom), invites.
import { useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { Who } from '../App';
import { type Health, api, describe, must, ok } from '../api/client';
import { ErrorNote, Link, ago, flashNext, navigate, useConfirm, useLoad } from '../ui';
import { PlatformNote, healthState } from './Bubbles';
import { CategoriesTab } from './Categories';
import { InvitesTab } from './Invites';
import { MembersTab } from './Members';
import { PolicyTab } from './Policy';

const TABS = ['health', 'members', 'categories', 'invites', 'policy'] as const;

export function BubbleScreen({ who, id, tab }: { who: Who; id: string; tab: string }) {
  const { t, i18n } = useTranslation();
  const bubbles = useLoad(async () => must(await api.GET('/api/v1/bubbles')), [], 10_000);
  const bubble = bubbles.data?.find((b) => b.id === id);
  if (bubbles.data && !bubble) {
    return (
      <div className="notice warn">
        {t('bubble.notFound')} <Link to="/">{t('nav.bubbles')}</Link>
      </div>
    );
  }
  const current = (TABS as readonly string[]).includes(tab) ? tab : 'health';
  const state = bubble ? healthState(bubble) : 'none';
  return (
    <>
      <p className="crumbs">
        <Link to="/">{t('nav.bubbles')}</Link> ›
      </p>
      <div className="row">
        <h1>{bubble?.display_name ?? id}</h1>
        {bubble && <span className={`pill ${state}`}>{t(`health.state.${state}`)}</span>}
      </div>
      {bubble && (
        <p className="muted small">
          {bubble.health ? t('health.lastReport', { when: ago(bubble.health.at, i18n.language) }) : t('health.noReport')}
        </p>
      )}
      {bubble?.origin && (
        <p className="small">
          {t('bubble.servedAt')} <a href={`${bubble.origin}/`}>{bubble.origin}/</a>
        </p>
      )}
      {bubble && <PlatformNote platform={bubble.platform} />}
      <ErrorNote error={bubbles.error} onRetry={bubbles.reload} />
      <nav className="tabs" aria-label={t('bubble.sections')}>
        {TABS.map((name) => (
          <Link key={name} to={`/bubbles/${encodeURIComponent(id)}/${name}`} className={name === current ? 'current' : ''}>
            {t(`bubble.tab.${name}`)}
          </Link>
        ))}
      </nav>
      {current === 'health' && <HealthTab id={id} />}
      {current === 'members' && <MembersTab who={who} bubble={id} />}
      {current === 'categories' && <CategoriesTab who={who} bubble={id} />}
      {current === 'invites' && <InvitesTab who={who} bubble={id} />}
      {current === 'policy' && <PolicyTab who={who} bubble={id} />}
      {who.orgAdmin && bubble && <DeleteBubble id={id} name={bubble.display_name} />}
    </>
  );
}

/** The end of a bubble, asked for in the page: its members are cut off at once and its directory goes. */
function DeleteBubble({ id, name }: { id: string; name: string }) {
  const { t } = useTranslation();
  const [confirm, dialog] = useConfirm();
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const remove = async () => {
    if (!(await confirm(t('bubble.deleteConfirm', { name }), t('bubble.deleteButton')))) return;
    setError(null);
    setBusy(true);
    try {
      ok(await api.DELETE('/api/v1/bubbles/{bubble}', { params: { path: { bubble: id } } }));
      flashNext(t('bubble.deleted', { name }));
      navigate('/');
    } catch (err) {
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <section className="card" aria-labelledby="delete-bubble">
      {dialog}
      <h2 id="delete-bubble">{t('bubble.deleteTitle')}</h2>
      <p className="small">{t('bubble.deleteHint')}</p>
      <ErrorNote error={error} />
      <button type="button" className="danger" disabled={busy} onClick={() => void remove()}>
        {busy ? t('bubble.deleting') : t('bubble.deleteButton')}
      </button>
    </section>
  );
}

const SERIES: { key: keyof Health; rate?: boolean; kib?: boolean }[] = [
  { key: 'online_members' },
  { key: 'sessions' },
  { key: 'turn_allocations' },
  { key: 'envelopes_relayed', rate: true },
  { key: 'turn_bytes_relayed', rate: true, kib: true },
  { key: 'envelopes_refused', rate: true },
  { key: 'auth_failures', rate: true },
];

function HealthTab({ id }: { id: string }) {
  const { t } = useTranslation();
  const since = Math.floor(Date.now() / 1000) - 3600;
  const samples = useLoad(
    async () =>
      must(await api.GET('/api/v1/bubbles/{bubble}/health', { params: { path: { bubble: id }, query: { since } } })),
    [id],
    10_000,
  );
  return (
    <section aria-labelledby="health-title">
      <h2 id="health-title" className="sr-only">
        {t('bubble.tab.health')}
      </h2>
      <ErrorNote error={samples.error} onRetry={samples.reload} />
      {samples.data && samples.data.length === 0 && <p className="empty">{t('health.emptySeries')}</p>}
      {samples.data && samples.data.length > 0 && (
        <>
          <p className="muted small">{t('health.window')}</p>
          <div className="charts">
            {SERIES.map((s) => (
              <Chart
                key={s.key}
                title={t(`health.series.${s.key}`)}
                points={points(samples.data ?? [], s.key, s.rate ?? false).map(([at, v]) => [at, s.kib ? v / 1024 : v] as [number, number])}
                rate={s.rate ?? false}
                unit={s.kib ? t('health.kibPerMinute') : t('health.perMinute')}
              />
            ))}
          </div>
        </>
      )}
    </section>
  );
}

/** (time, value) pairs; counters since start become per-minute rates (a restart shows as a reset, not a dip). */
function points(samples: Health[], key: keyof Health, rate: boolean): [number, number][] {
  if (!rate) return samples.map((s) => [s.at, Number(s[key])]);
  const out: [number, number][] = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1];
    const b = samples[i];
    if (!a || !b || b.at <= a.at) continue;
    const delta = Number(b[key]) - Number(a[key]);
    out.push([b.at, delta < 0 ? 0 : (delta * 60) / (b.at - a.at)]);
  }
  return out;
}

const W = 320;
const H = 110;

/** A line chart drawn as SVG: the last hour, its latest value in words beside it. */
function Chart({ title, points: pts, rate, unit }: { title: string; points: [number, number][]; rate: boolean; unit: string }) {
  const last = pts.at(-1)?.[1];
  const max = Math.max(1, ...pts.map((p) => p[1]));
  const t0 = pts[0]?.[0] ?? 0;
  const t1 = Math.max(t0 + 1, pts.at(-1)?.[0] ?? 1);
  const x = (at: number) => ((at - t0) / (t1 - t0)) * (W - 8) + 4;
  const y = (v: number) => H - 14 - (v / max) * (H - 28);
  const line = pts.map((p, i) => `${i === 0 ? 'M' : 'L'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
  const shown = last === undefined ? '—' : rate ? last.toFixed(1) : String(last);
  return (
    <figure className="chart">
      <figcaption>
        <span>{title}</span>
        <strong>
          {shown}
          {rate && <span className="unit"> {unit}</span>}
        </strong>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`${title}: ${shown}`}>
        <line x1="4" x2={W - 4} y1={H - 14} y2={H - 14} className="axis" />
        <text x="4" y="10" className="tick">
          {Number.isInteger(max) ? max : max.toFixed(1)}
        </text>
        {pts.length > 1 && <path d={line} className="series" />}
        {pts.length === 1 && pts[0] && <circle cx={x(pts[0][0])} cy={y(pts[0][1])} r="3" className="dot" />}
      </svg>
    </figure>
  );
}
