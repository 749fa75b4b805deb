// Every bubble in the caller's scope with its health at a glance, refreshed every 10 s; an organisation-wide
// admin creates bubbles here (the credential its bubble-server needs is shown once).
import { type FormEvent, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { Who } from '../App';
import { type Bubble, api, describe, must } from '../api/client';
import { Done, ErrorNote, Link, ago, useFlash, useLoad } from '../ui';

/** A report older than this means the bubble-server is not reporting (3 intervals of 10 s, plus slack). */
export const STALE_SECS = 45;

/** Whether its bubble-server reports. Refusals are counters since the server started: shown as figures (and as
 * rates on the bubble's charts), not as a state that would stay red for good after one wrong passphrase. */
export function healthState(bubble: Bubble): 'none' | 'stale' | 'ok' {
  const h = bubble.health;
  if (!h) return 'none';
  return Date.now() / 1000 - h.at > STALE_SECS ? 'stale' : 'ok';
}

/** A byte count for people (the relay's traffic). */
export function bytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(1)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${n} B`;
}

/** What the platform running a bubble reports (in a cluster: its Bubble resource's conditions and signaling
 * endpoint), when there is one: a micro-node runs its bubbles itself and reports nothing here. What is not ready
 * is named with the platform's own words, so that an administrator knows what to wait for or fix. */
export function PlatformNote({ platform }: { platform: Bubble['platform'] }) {
  const { t } = useTranslation();
  if (!platform) return null;
  const notReady = platform.conditions.filter((c) => !c.status);
  // The pill says whether the whole is ready; list the parts that are not (the overall condition only if alone).
  const shown = notReady.length > 1 ? notReady.filter((c) => c.type !== 'Ready') : notReady;
  return (
    <div className="platform">
      <p className="row">
        <span className="small">{t('platform.title')}</span>
        <span className={`pill ${platform.ready ? 'ok' : 'stale'}`}>{platform.ready ? t('platform.ready') : t('platform.notReady')}</span>
      </p>
      {shown.length > 0 && (
        <ul className="conditions small">
          {shown.map((c) => (
            <li key={c.type}>
              <strong>{t(`platform.condition.${c.type}`, { defaultValue: c.type })}</strong>
              {' — '}
              {c.message || c.reason}
            </li>
          ))}
        </ul>
      )}
      {platform.signaling && (
        <p className="small muted">
          {t('platform.signaling')} <span className="mono">{platform.signaling}</span>
        </p>
      )}
    </div>
  );
}

export function BubblesScreen({ who }: { who: Who }) {
  const { t, i18n } = useTranslation();
  const bubbles = useLoad(async () => must(await api.GET('/api/v1/bubbles')), [], 10_000);
  const flash = useFlash();
  return (
    <>
      <div className="row">
        <h1>{t('bubbles.title')}</h1>
      </div>
      <Done text={flash} />
      <ErrorNote error={bubbles.error} onRetry={bubbles.reload} />
      {bubbles.data && bubbles.data.length === 0 && <p className="empty">{who.orgAdmin ? t('bubbles.emptyAdmin') : t('bubbles.empty')}</p>}
      {bubbles.data && bubbles.data.length > 0 && (
        <ul className="cards">
          {bubbles.data.map((b) => {
            const state = healthState(b);
            return (
              <li key={b.id} className="card bubble">
                <div className="row">
                  <h2>
                    <Link to={`/bubbles/${encodeURIComponent(b.id)}`}>{b.display_name}</Link>
                  </h2>
                  <span className={`pill ${state}`}>{t(`health.state.${state}`)}</span>
                </div>
                <p className="muted mono">{b.id}</p>
                {b.origin && (
                  <p className="small">
                    {t('bubbles.servedAt')} <a href={`${b.origin}/`}>{b.origin}/</a>
                  </p>
                )}
                <PlatformNote platform={b.platform} />
                <dl className="figures">
                  <div>
                    <dt>{t('health.online')}</dt>
                    <dd>{b.health?.online_members ?? '—'}</dd>
                  </div>
                  <div>
                    <dt>{t('health.sessions')}</dt>
                    <dd>{b.health?.sessions ?? '—'}</dd>
                  </div>
                  <div>
                    <dt>{t('health.turn')}</dt>
                    <dd>{b.health?.turn_allocations ?? '—'}</dd>
                  </div>
                  <div>
                    <dt>{t('health.relayed')}</dt>
                    <dd>{b.health?.envelopes_relayed ?? '—'}</dd>
                  </div>
                  <div>
                    <dt>{t('health.turnBytes')}</dt>
                    <dd>{b.health ? bytes(b.health.turn_bytes_relayed) : '—'}</dd>
                  </div>
                  <div>
                    <dt>{t('health.errors')}</dt>
                    <dd>{b.health ? b.health.envelopes_refused + b.health.auth_failures : '—'}</dd>
                  </div>
                </dl>
                <p className="muted small">
                  {b.health ? t('health.lastReport', { when: ago(b.health.at, i18n.language) }) : t('health.noReport')}
                </p>
              </li>
            );
          })}
        </ul>
      )}
      {who.orgAdmin && <CreateBubble onCreated={bubbles.reload} />}
    </>
  );
}

function CreateBubble({ onCreated }: { onCreated: () => void }) {
  const { t } = useTranslation();
  const [name, setName] = useState('');
  const [id, setId] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [credential, setCredential] = useState<{ id: string; credential: string; origin?: string | null } | null>(null);
  const suggested = name
    .toLowerCase()
    .normalize('NFD')
    .replace(/[\u0300-\u036f]/g, '')
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 64);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      const created = must(await api.POST('/api/v1/bubbles', { body: { id: id || suggested, display_name: name } }));
      setCredential({ id: created.id, credential: created.credential, origin: created.origin });
      setName('');
      setId('');
      onCreated();
    } catch (err) {
      setError(describe(err));
    }
  };
  return (
    <section className="card" aria-labelledby="new-bubble">
      <h2 id="new-bubble">{t('bubbles.create')}</h2>
      <form onSubmit={(e) => void submit(e)} className="grid2">
        <div>
          <label htmlFor="bubble-name">{t('bubbles.name')}</label>
          <input id="bubble-name" value={name} onChange={(e) => setName(e.target.value)} maxLength={64} required />
        </div>
        <div>
          <label htmlFor="bubble-id">{t('bubbles.id')}</label>
          <input id="bubble-id" value={id} placeholder={suggested} onChange={(e) => setId(e.target.value)} pattern="[a-z0-9-]{1,64}" />
          <p className="hint">{t('bubbles.idHint')}</p>
        </div>
        <div className="span2">
          <ErrorNote error={error} />
          <button type="submit" className="primary" disabled={name.trim() === ''}>
            {t('bubbles.createButton')}
          </button>
        </div>
      </form>
      {credential && (
        <div className="notice done" role="status">
          {credential.origin && (
            <p>
              {t('bubbles.createdServed', { id: credential.id })} <a href={`${credential.origin}/`}>{credential.origin}/</a>
            </p>
          )}
          <p>{t('bubbles.created', { id: credential.id })}</p>
          <p className="mono break">{credential.credential}</p>
          <p className="small">{t('bubbles.credentialHint')}</p>
        </div>
      )}
    </section>
  );
}
