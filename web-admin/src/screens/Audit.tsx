// The audit trail: filter by bubble, actor, kind and time, page through it, export what the filter shows as CSV.
// How long events are kept is said above the table.
import { useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { Who } from '../App';
import { api, must } from '../api/client';
import { ErrorNote, useLoad, when } from '../ui';

const PAGE = 50;
const KINDS = ['', 'member.', 'invite.', 'category.', 'bubble.', 'session.', 'admin.', 'token.'];

function toUnix(local: string): number | undefined {
  if (!local) return undefined;
  const ms = new Date(local).getTime();
  return Number.isNaN(ms) ? undefined : Math.floor(ms / 1000);
}

export function AuditScreen({ who }: { who: Who }) {
  const { t, i18n } = useTranslation();
  const bubbles = useLoad(async () => must(await api.GET('/api/v1/bubbles')), []);
  const info = useLoad(async () => must(await api.GET('/api/v1/info')), []);
  const [bubble, setBubble] = useState('');
  const [actor, setActor] = useState('');
  const [kind, setKind] = useState('');
  const [from, setFrom] = useState('');
  const [to, setTo] = useState('');
  const [offset, setOffset] = useState(0);
  // An administrator scoped to some bubbles must name one; start with the first.
  const chosen = bubble || (who.allBubbles ? '' : (bubbles.data?.[0]?.id ?? ''));
  const query = {
    bubble: chosen || undefined,
    actor: actor || undefined,
    action: kind || undefined,
    since: toUnix(from),
    until: toUnix(to),
  };
  const events = useLoad(
    async () => (bubbles.data === undefined ? [] : must(await api.GET('/api/v1/audit', { params: { query: { ...query, limit: PAGE, offset } } }))),
    [JSON.stringify(query), offset, bubbles.data === undefined],
  );
  const csv = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined).map(([k, v]) => [k, String(v)]));
  const reset = () => setOffset(0);
  return (
    <>
      <h1>{t('audit.title')}</h1>
      {info.data && <p className="muted small">{t('audit.retention', { days: info.data.audit_retention_days })}</p>}
      <form className="filters card" onSubmit={(e) => e.preventDefault()} aria-label={t('audit.filters')}>
        <div>
          <label htmlFor="audit-bubble">{t('audit.bubble')}</label>
          <select id="audit-bubble" value={chosen} onChange={(e) => (setBubble(e.target.value), reset())}>
            {who.allBubbles && <option value="">{t('audit.allBubbles')}</option>}
            {(bubbles.data ?? []).map((b) => (
              <option key={b.id} value={b.id}>
                {b.display_name}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="audit-actor">{t('audit.actor')}</label>
          <input id="audit-actor" value={actor} onChange={(e) => (setActor(e.target.value), reset())} placeholder="admin:…" />
        </div>
        <div>
          <label htmlFor="audit-kind">{t('audit.kind')}</label>
          <select id="audit-kind" value={kind} onChange={(e) => (setKind(e.target.value), reset())}>
            {KINDS.map((k) => (
              <option key={k} value={k}>
                {k ? t(`audit.kinds.${k.slice(0, -1)}`) : t('audit.allKinds')}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="audit-from">{t('audit.from')}</label>
          <input id="audit-from" type="datetime-local" value={from} onChange={(e) => (setFrom(e.target.value), reset())} />
        </div>
        <div>
          <label htmlFor="audit-to">{t('audit.to')}</label>
          <input id="audit-to" type="datetime-local" value={to} onChange={(e) => (setTo(e.target.value), reset())} />
        </div>
        <div className="end-self">
          <a className="button" href={`/api/v1/audit.csv?${csv.toString()}`} download>
            {t('audit.export')}
          </a>
        </div>
      </form>
      <ErrorNote error={events.error ?? bubbles.error} onRetry={events.reload} />
      {bubbles.data === undefined && !bubbles.error && <p className="muted">{t('loading')}</p>}
      {bubbles.data && events.data && events.data.length === 0 && <p className="empty">{offset ? t('audit.noMore') : t('audit.empty')}</p>}
      {bubbles.data && events.data && events.data.length > 0 && (
        <div className="table-wrap">
          <table className="audit stack">
            <thead>
              <tr>
                <th>{t('audit.when')}</th>
                <th>{t('audit.bubble')}</th>
                <th>{t('audit.actor')}</th>
                <th>{t('audit.action')}</th>
                <th>{t('audit.detail')}</th>
              </tr>
            </thead>
            <tbody>
              {events.data.map((e, i) => (
                <tr key={`${e.at}-${i}`}>
                  <td className="nowrap" data-label={t('audit.when')}>
                    {when(e.at, i18n.language)}
                  </td>
                  <td data-label={t('audit.bubble')}>{e.bubble ?? '—'}</td>
                  <td className="mono small" data-label={t('audit.actor')}>
                    {e.actor}
                  </td>
                  <td className="mono small" data-label={t('audit.action')}>
                    {e.action}
                  </td>
                  <td className="small break" data-label={t('audit.detail')}>
                    {e.detail}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <div className="row pager">
        <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>
          {t('audit.newer')}
        </button>
        <span className="muted small">{t('audit.page', { from: offset + 1, to: offset + (events.data?.length ?? 0) })}</span>
        <button type="button" disabled={(events.data?.length ?? 0) < PAGE} onClick={() => setOffset(offset + PAGE)}>
          {t('audit.older')}
        </button>
      </div>
    </>
  );
}
