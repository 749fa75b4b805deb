// The bubble's policy: what members' clients must do (masked conversations, a disappearing timer, files and
// their size, calls, relay-only). Delivered in `welcome` and pushed to connected members when it changes; the
// clients enforce it (the server never sees content, so it cannot).
import { type FormEvent, useEffect, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { Who } from '../App';
import { type Schemas, api, describe, must, ok } from '../api/client';
import { Done, ErrorNote, useLoad } from '../ui';

type Policy = Schemas['BubblePolicy'];

const MIB = 1024 * 1024;

export function PolicyTab({ who, bubble }: { who: Who; bubble: string }) {
  const { t } = useTranslation();
  const loaded = useLoad(async () => must(await api.GET('/api/v1/bubbles/{bubble}/policy', { params: { path: { bubble } } })), [bubble]);
  const [policy, setPolicy] = useState<Policy | null>(null);
  const [hours, setHours] = useState('');
  const [mib, setMib] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  useEffect(() => {
    if (!loaded.data) return;
    setPolicy(loaded.data);
    setHours(loaded.data.disappear_within_secs ? String(loaded.data.disappear_within_secs / 3600) : '');
    setMib(String(Math.round(loaded.data.max_file_bytes / MIB)));
  }, [loaded.data]);
  const readOnly = !who.canChange;
  const set = (patch: Partial<Policy>) => policy && setPolicy({ ...policy, ...patch });
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!policy) return;
    setError(null);
    setDone(null);
    const h = hours.trim() === '' ? 0 : Number(hours);
    const m = Number(mib);
    if (!Number.isFinite(h) || h < 0 || !Number.isFinite(m) || m < 1) {
      setError(t('policy.invalid'));
      return;
    }
    try {
      ok(
        await api.PUT('/api/v1/bubbles/{bubble}/policy', {
          params: { path: { bubble } },
          body: { ...policy, disappear_within_secs: Math.round(h * 3600), max_file_bytes: Math.round(m * MIB) },
        }),
      );
      setDone(t('policy.saved'));
      loaded.reload();
    } catch (err) {
      setError(describe(err));
    }
  };
  return (
    <section aria-labelledby="policy-title">
      <h2 id="policy-title" className="sr-only">
        {t('bubble.tab.policy')}
      </h2>
      <p className="muted">{t('policy.intro')}</p>
      <ErrorNote error={loaded.error} onRetry={loaded.reload} />
      {policy && (
        <form className="card policy" onSubmit={(e) => void submit(e)}>
          <fieldset disabled={readOnly}>
            <legend className="sr-only">{t('bubble.tab.policy')}</legend>
            <label className="check">
              <input type="checkbox" checked={policy.masked_by_default} onChange={(e) => set({ masked_by_default: e.target.checked })} />
              {t('policy.masked')}
            </label>
            <p className="hint">{t('policy.maskedHint')}</p>
            <label htmlFor="policy-hours">{t('policy.disappear')}</label>
            <input id="policy-hours" inputMode="decimal" value={hours} placeholder={t('policy.disappearNone')} onChange={(e) => setHours(e.target.value)} />
            <p className="hint">{t('policy.disappearHint')}</p>
            <label className="check">
              <input type="checkbox" checked={policy.files_allowed} onChange={(e) => set({ files_allowed: e.target.checked })} />
              {t('policy.files')}
            </label>
            <label htmlFor="policy-mib">{t('policy.maxFile')}</label>
            <input id="policy-mib" inputMode="numeric" value={mib} disabled={!policy.files_allowed} onChange={(e) => setMib(e.target.value)} />
            <label className="check">
              <input type="checkbox" checked={policy.calls_allowed} onChange={(e) => set({ calls_allowed: e.target.checked })} />
              {t('policy.calls')}
            </label>
            <label className="check">
              <input type="checkbox" checked={policy.relay_only} onChange={(e) => set({ relay_only: e.target.checked })} />
              {t('policy.relayOnly')}
            </label>
            <p className="hint">{t('policy.relayOnlyHint')}</p>
          </fieldset>
          <ErrorNote error={error} />
          <Done text={done} />
          {!readOnly && (
            <button type="submit" className="primary">
              {t('policy.save')}
            </button>
          )}
        </form>
      )}
    </section>
  );
}
