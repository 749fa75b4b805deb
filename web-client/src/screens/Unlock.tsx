import { type FormEvent, useEffect, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { WorkerClient } from '../client';
import { Centered } from '../components';
import type { SecurityKeyRef } from '../protocol';
import { SecurityKeyError, securityKeySecret, wipe } from '../securityKey';

export function Unlock(props: {
  client: WorkerClient;
  bubble: string;
  retryAt: number;
  securityKey: SecurityKeyRef | null;
  inviteIgnored: boolean;
}) {
  const { t } = useTranslation();
  const [passphrase, setPassphrase] = useState('');
  const [busy, setBusy] = useState<'key' | 'open' | null>(null);
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
    setError(null);
    // The key is asked first: a member who cannot touch it now has not spent an attempt.
    let securitySecret: Uint8Array | undefined;
    if (props.securityKey) {
      setBusy('key');
      try {
        securitySecret = await securityKeySecret(props.securityKey);
      } catch (err) {
        setBusy(null);
        const problem = err instanceof SecurityKeyError ? err.problem : 'failed';
        return setError(t(`securityKey.unlock.${problem}`));
      }
    }
    setBusy('open');
    try {
      await props.client.send({ kind: 'unlock', passphrase, securitySecret });
      setPassphrase('');
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      setError(
        message.startsWith('wrong_segments')
          ? t(props.securityKey ? 'unlock.wrongWithKey' : 'unlock.wrong')
          : message.startsWith('hardware_key_needed')
            ? t('securityKey.unlock.needed')
            : message.startsWith('wait')
              ? t('unlock.wait')
              : message,
      );
      setNow(Date.now());
    } finally {
      wipe(securitySecret);
      setBusy(null);
    }
  };

  return (
    <Centered>
      <h1>{t('unlock.title')}</h1>
      {props.bubble && <p>{t('unlock.intro', { bubble: props.bubble })}</p>}
      {props.inviteIgnored && <p className="notice">{t('unlock.alreadyEnrolled')}</p>}
      {props.securityKey && <p className="muted">{t('securityKey.unlock.explain')}</p>}
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
        {busy === 'key' && (
          <p className="notice" role="status">
            {t('securityKey.touch')}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy !== null || wait > 0}>
          {busy === 'open' ? t('unlock.working') : busy === 'key' ? t('securityKey.waiting') : t(props.securityKey ? 'unlock.submitWithKey' : 'unlock.submit')}
        </button>
      </form>
    </Centered>
  );
}
