import { type FormEvent, useEffect, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { WorkerClient } from '../client';
import { Centered } from '../components';

export function Unlock(props: { client: WorkerClient; bubble: string; retryAt: number; inviteIgnored: boolean }) {
  const { t } = useTranslation();
  const [passphrase, setPassphrase] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (props.retryAt <= now) return;
    const timer = setInterval(() => setNow(Date.now()), 500);
    return () => clearInterval(timer);
  }, [props.retryAt, now]);
  const wait = Math.max(0, Math.ceil((props.retryAt - now) / 1000));

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await props.client.send({ kind: 'unlock', passphrase });
      setPassphrase('');
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      setError(message.startsWith('wrong_segments') ? t('unlock.wrong') : message.startsWith('wait') ? t('unlock.wait') : message);
      setNow(Date.now());
    } finally {
      setBusy(false);
    }
  };

  return (
    <Centered>
      <h1>{t('unlock.title')}</h1>
      {props.bubble && <p>{t('unlock.intro', { bubble: props.bubble })}</p>}
      {props.inviteIgnored && <p className="notice">{t('unlock.alreadyEnrolled')}</p>}
      <form onSubmit={(e) => void submit(e)} className="form">
        <label>
          {t('unlock.passphrase')}
          <input type="password" value={passphrase} onChange={(e) => setPassphrase(e.target.value)} autoComplete="current-password" autoFocus required />
        </label>
        {error && (
          <p className="error" role="alert">
            {error}
          </p>
        )}
        {wait > 0 && (
          <p className="muted" role="status">
            {!error && `${t('unlock.wait')} `}
            {t('unlock.retryIn', { seconds: wait })}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy || wait > 0}>
          {busy ? t('unlock.working') : t('unlock.submit')}
        </button>
      </form>
    </Centered>
  );
}
